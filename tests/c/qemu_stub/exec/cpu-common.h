/* Stand-in for QEMU's exec/cpu-common.h (the stand-in memory.h holds its part). */
#include "exec/memory.h"
