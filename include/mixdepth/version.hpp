#pragma once
// Parsed by CMakeLists.txt: keep the three defines on their own lines.
#define MIXDEPTH_VERSION_MAJOR 0
#define MIXDEPTH_VERSION_MINOR 1
#define MIXDEPTH_VERSION_PATCH 0

#define MIXDEPTH_VERSION_STRING "0.1.0"
