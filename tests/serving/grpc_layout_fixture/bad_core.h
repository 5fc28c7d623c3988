// A core file that breaks the layout rule (check_grpc_layout.cmake must name it).
#include <grpcpp/channel.h>
