// Translation unit B of the ODR program: runs the workload with A's block functions.
#include "odr_workload.hpp"

namespace odr {

void update_b(const mixdepth::Routed<float>& routed, mixdepth::MatrixRef<float> out) {
  reference_update(routed, out);
}
void update_b(const mixdepth::Routed<double>& routed, mixdepth::MatrixRef<double> out) {
  reference_update(routed, out);
}

Output run_b(const Input& input) {
  Run run(input, "unit b");
  run.all<float>(&update_a);
  run.all<double>(&update_a);
  return run.take();
}

}  // namespace odr
