#include "tests/text/corpus.h"

namespace tunefleet::text {

std::vector<std::string> PlainCorpus() {
  std::vector<std::string> texts = {
      "Hello world!",
      "  leading spaces and trailing   ",
      "Tabs\tand\nnewlines\r\n\n\nmulti   \n  spaces\n",
      " ",
      "\n",
      "Numbers: 1234567890 3.14159 -42 1,000,000 and 12345678901234567890; Arabic-Indic "
      "\xD9\xA1\xD9\xA2\xD9\xA3",
      "Espa\xC3\xB1ol: \xC2\xBFQu\xC3\xA9 tal? Ma\xC3\xB1"
      "ana ser\xC3\xA1 un d\xC3\xAD"
      "a incre\xC3\xAD"
      "ble. \xC3\x91"
      "and\xC3\xBA.",
      "Deutsch: Gr\xC3\xB6\xC3\x9F"
      "enverh\xC3\xA4ltnisse, Stra\xC3\x9F"
      "e, \xC3\x84pfel",
      "Fran\xC3\xA7"
      "ais : l'\xC3\xA9t\xC3\xA9 dernier, c'\xC3\xA9tait g\xC3\xA9nial \xE2\x80\x94 n'est-ce pas ?",
      "\xD0\xA0\xD1\x83\xD1\x81\xD1\x81\xD0\xBA\xD0\xB8\xD0\xB9 "
      "\xD1\x82\xD0\xB5\xD0\xBA\xD1\x81\xD1\x82: "
      "\xD0\xA1\xD1\x8A\xD0\xB5\xD1\x88\xD1\x8C \xD0\xB6\xD0\xB5 \xD0\xB5\xD1\x89\xD1\x91.",
      "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E\xE3\x81\xAE\xE3\x83\x86\xE3\x82\xAD\xE3\x82\xB9\xE3\x83"
      "\x88\xEF\xBC\x9A"
      "\xE6\x9D\xB1\xE4\xBA\xAC\xE3\x81\xAF\xE6\x97\xA5\xE6\x9C\xAC\xE3\x81\xAE\xE9\xA6\x96\xE9\x83"
      "\xBD\xE3\x81\xA7"
      "\xE3\x81\x99\xE3\x80\x82",
      "\xE4\xB8\xAD\xE6\x96\x87\xEF\xBC\x9A\xE6\x88\x91\xE7\x88\xB1\xE8\x87\xAA\xE7\x84\xB6\xE8\xAF"
      "\xAD\xE8\xA8\x80"
      "\xE5\xA4\x84\xE7\x90\x86\xEF\xBC\x8C\xE4\xBB\x8A\xE5\xA4\xA9\xE5\xA4\xA9\xE6\xB0\x94\xE5\xBE"
      "\x88\xE5\xA5\xBD"
      "\xEF\xBC\x81",
      "\xED\x95\x9C\xEA\xB5\xAD\xEC\x96\xB4: "
      "\xEC\x95\x88\xEB\x85\x95\xED\x95\x98\xEC\x84\xB8\xEC\x9A\x94, "
      "\xEC\x84\xB8\xEA\xB3\x84!",
      "Emoji: \xF0\x9F\x98\x80\xF0\x9F\x8E\x89\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD "
      "\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7 "
      "\xF0\x9F\x87\xAA\xF0\x9F\x87\xB8 "
      "\xE2\x9D\xA4\xEF\xB8\x8F!!",
      "Math: \xE2\x88\x91(x\xC2\xB2) \xE2\x89\xA4 \xE2\x88\x9E, \xCE\xB1+\xCE\xB2=\xCE\xB3",
      "Code: def f(x):\n    return x**2  # comment\n\tif a != b: pass\n\n\n}",
      "I'm sure you've seen it; they'll say we'd DON'T IT'S 'Ll \xE2\x80\x99s",
      // Invalid UTF-8: a stray continuation, an invalid lead, a bad second
      // byte, truncated sequences, an encoded surrogate, an overlong form.
      "bad \xFF\xFE bytes \xC3\x28 and \xE2\x82 trunc \xF0\x9F\x98 end \xED\xA0\x80 s \xC0\xAF o "
      "\x80",
      "\xF0\x9F\x98",
      // Combining marks (NFC composes them for Qwen) and Hangul jamo.
      "Combining: e\xCC\x81 vs \xC3\xA9, A\xCC\x8A vs \xC3\x85, q\xCC\xA3\xCC\x87, jamo "
      "\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8",
      "\xEF\xAC\x81 ligature, fullwidth "
      "\xEF\xBC\xA1\xEF\xBC\xA2\xEF\xBC\xA3\xEF\xBC\x91\xEF\xBC\x92, "
      "nbsp\xC2\xA0here, ideographic\xE3\x80\x80space",
      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa !!!!!!?????..... ----- ====",
      "",
  };
  std::string long_text;
  for (int i = 0; i < 40; ++i) {
    long_text +=
        "The quick brown fox jumps over the lazy dog. El veloz murci\xC3\xA9lago hind\xC3\xBA "
        "comi\xC3\xB3 "
        "feliz cardillo y kiwi. "
        "\xE6\x88\x91\xE4\xBB\xAC\xE4\xB8\x80\xE8\xB5\xB7\xE5\xAD\xA6\xE4\xB9\xA0\xE3\x80\x82 "
        "Line " +
        std::to_string(i * 7919) + "\n\n";
  }
  texts.push_back(long_text);
  return texts;
}

std::vector<std::string> Corpus() {
  std::vector<std::string> texts = PlainCorpus();
  for (const char* t : {
           "<s>Hello</s> <unk>",
           "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
           "<|start_header_id|>assistant<|end_header_id|>\n\n",
           "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
           "<|im_start|>assistant\n<think>\n\n</think>\n\nHello<|im_end|>\n",
           "<|system|>\nBe brief.<|end|>\n<|user|>\nHello<|end|>\n<|assistant|>\nHi there  "
           "<|end|>\n<|endoftext|>",
           "text<|end|>more <|user|>  spaced\n\n<|assistant|>",
       }) {
    texts.push_back(t);
  }
  return texts;
}

}  // namespace tunefleet::text
