#pragma once
// What the ODR driver hands to each translation unit and gets back. Plain standard types
// only: the driver includes no mixdepth header, so it can check the CPU before any code
// compiled with wider -m flags runs.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace odr {

struct Input {
  std::string name;
  std::ptrdiff_t batch = 0;
  std::ptrdiff_t seq_len = 0;
  std::ptrdiff_t dim = 0;
  std::vector<double> x;        // [batch * seq_len, dim], values exact in float
  std::vector<double> weight;   // [dim]
  double bias = 0.0;
  std::vector<double> scores;   // [batch * seq_len] for select_top_k: ties, NaN, inf, +-0, denormals
  std::vector<std::ptrdiff_t> lengths;  // empty or [batch]
  std::ptrdiff_t k = 0;         // for select_top_k on `scores`
  double capacity = 0.125;      // for the blocks
};

// One named result. tolerance 0: the two translation units must agree bit for bit;
// otherwise within tolerance * max(1, |value|) (the sigmoid gate rounds differently with FMA).
struct Record {
  std::string name;
  std::vector<double> values;
  double tolerance = 0.0;
};

struct Output {
  std::string unit;                   // which translation unit produced it
  std::string arch;                   // the SIMD target it was compiled for
  std::vector<Record> records;
  std::vector<std::string> failures;  // invariants a unit checked on its own results
};

// Defined in odr_a.cpp and odr_b.cpp: the same workload, compiled in each unit.
Output run_a(const Input& input);
Output run_b(const Input& input);

}  // namespace odr
