// The dataset service's wire format: core records and analyses as
// tunefleet.v1 messages. The one place that knows both sides.
#pragma once

#include <string>

#include "services/dataset/analyzer.h"
#include "services/dataset/file_registry.h"
#include "tunefleet/v1/files.pb.h"

namespace tunefleet::dataset {

void ToProto(const FileRecord& record, v1::File* out);
void ToProto(const Analysis& analysis, v1::ValidationReport* out);
// The serialized ValidationReport FileProcessor stores with a file.
std::string EncodeReport(const FileRecord& file, const Analysis& analysis);

}  // namespace tunefleet::dataset
