#include "test_helpers.hpp"
TEST_CASE("smoke") { CHECK(mixdepth::Capacity::fraction(0.1)(30) == 3); }
