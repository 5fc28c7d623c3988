// Allowed: main.cc composes the gRPC side.
#include <grpcpp/server.h>
