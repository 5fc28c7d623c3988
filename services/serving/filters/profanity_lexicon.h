// A multilingual profanity lexicon generated from a published list (see
// gen_profanity_lexicon.py for the source, version and the few entries left
// out); never edited by hand.
#pragma once

namespace tunefleet::serving {

struct ProfanityEntry {
  const char* language;  // the list's file name: "en", "de", "zh", ...
  const char* term;      // UTF-8
};

extern const ProfanityEntry kProfanityLexicon[];
extern const int kProfanityLexiconSize;
extern const char kProfanityLexiconSource[];

}  // namespace tunefleet::serving
