// The multilingual test corpus: whitespace runs, digits, emoji, CJK, invalid
// UTF-8, combining marks, special-token strings and a long text.
#pragma once

#include <string>
#include <vector>

namespace tunefleet::text {

// Every text, special-token strings included.
std::vector<std::string> Corpus();
// Only texts without special-token strings (for encoders that know none).
std::vector<std::string> PlainCorpus();

}  // namespace tunefleet::text
