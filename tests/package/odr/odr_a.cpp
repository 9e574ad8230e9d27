// Translation unit A of the ODR program: runs the workload with B's block functions.
#include "odr_workload.hpp"

namespace odr {

void update_a(const mixdepth::Routed<float>& routed, mixdepth::MatrixRef<float> out) {
  reference_update(routed, out);
}
void update_a(const mixdepth::Routed<double>& routed, mixdepth::MatrixRef<double> out) {
  reference_update(routed, out);
}

Output run_a(const Input& input) {
  Run run(input, "unit a");
  run.all<float>(&update_b);
  run.all<double>(&update_b);
  return run.take();
}

}  // namespace odr
