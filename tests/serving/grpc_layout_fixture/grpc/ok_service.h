// Allowed: under grpc/.
#include <grpcpp/channel.h>
#include "tunefleet/v1/inference.grpc.pb.h"
