// The ODR program's driver: runs the same workload in two translation units that both
// include <mixdepth/mixdepth.hpp> and instantiate the same templates (possibly compiled with
// different -m flags), and checks that their results agree with each other and with a plain
// top-k reference. Exit code 77 (a skip) when the CPU cannot run what the units were
// compiled for.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "odr_io.hpp"

namespace {

int failures = 0;

void report(const std::string& message) {
  std::printf("FAIL: %s\n", message.c_str());
  ++failures;
}

bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

// Scores full of what a top-k gets wrong: ties, NaN, infinities, signed zeros, denormals.
template <class Rng>
double special_score(Rng& rng) {
  std::uniform_int_distribution<int> pick(0, 19);
  std::uniform_int_distribution<int> small(-3, 3);
  switch (pick(rng)) {
    case 0: return std::numeric_limits<double>::quiet_NaN();
    case 1: return std::numeric_limits<double>::infinity();
    case 2: return -std::numeric_limits<double>::infinity();
    case 3: return 0.0;
    case 4: return -0.0;
    case 5: return double(std::numeric_limits<float>::denorm_min()) * small(rng);
    default: return small(rng) * 0.5;
  }
}

odr::Input make_input(std::string name, std::ptrdiff_t batch, std::ptrdiff_t seq_len,
                      std::ptrdiff_t dim, std::ptrdiff_t k, double capacity,
                      std::vector<std::ptrdiff_t> lengths, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> eighths(-8, 8), quarters(-4, 4);
  odr::Input in;
  in.name = std::move(name);
  in.batch = batch;
  in.seq_len = seq_len;
  in.dim = dim;
  in.k = k;
  in.capacity = capacity;
  in.lengths = std::move(lengths);
  in.x.resize(std::size_t(batch * seq_len * dim));
  for (double& v : in.x) v = eighths(rng) / 8.0;
  in.weight.resize(std::size_t(dim));
  for (double& v : in.weight) v = quarters(rng) / 4.0;
  in.bias = 0.5;
  in.scores.resize(std::size_t(batch * seq_len));
  for (double& v : in.scores) v = special_score(rng);
  return in;
}

// Top-k by the contract, the slow obvious way: valid before padding, numbers before NaN,
// larger first, lower position first; then ascending positions.
template <class T>
std::vector<double> reference_top_k(const odr::Input& in, bool with_lengths) {
  std::vector<double> out;
  const std::ptrdiff_t kept = std::min(in.k, in.seq_len);
  for (std::ptrdiff_t b = 0; b < in.batch; ++b) {
    const std::ptrdiff_t valid = with_lengths && !in.lengths.empty() ? in.lengths[std::size_t(b)] : in.seq_len;
    std::vector<std::ptrdiff_t> order(std::size_t(in.seq_len));
    std::iota(order.begin(), order.end(), 0);
    auto score = [&](std::ptrdiff_t i) { return static_cast<T>(in.scores[std::size_t(b * in.seq_len + i)]); };
    std::stable_sort(order.begin(), order.end(), [&](std::ptrdiff_t i, std::ptrdiff_t j) {
      const bool pad_i = i >= valid, pad_j = j >= valid;
      if (pad_i != pad_j) return pad_j;
      if (pad_i) return false;  // padding: stable, lowest first
      const bool nan_i = std::isnan(score(i)), nan_j = std::isnan(score(j));
      if (nan_i != nan_j) return nan_j;
      if (nan_i) return false;
      return score(i) > score(j);  // -0 == +0: stable order keeps the lower position first
    });
    order.resize(std::size_t(kept));
    std::sort(order.begin(), order.end());
    for (std::ptrdiff_t p : order) out.push_back(double(p));
  }
  return out;
}

const odr::Record* find(const odr::Output& out, const std::string& name) {
  for (const auto& r : out.records)
    if (r.name == name) return &r;
  return nullptr;
}

void compare(const odr::Input& in, const odr::Output& a, const odr::Output& b) {
  const std::string where = in.name + ": ";
  for (const auto* out : {&a, &b})
    for (const auto& f : out->failures) report(where + f);
  if (a.records.size() != b.records.size()) {
    report(where + "unit a has " + std::to_string(a.records.size()) + " results, unit b " +
           std::to_string(b.records.size()));
    return;
  }
  for (std::size_t i = 0; i < a.records.size(); ++i) {
    const odr::Record& ra = a.records[i];
    const odr::Record& rb = b.records[i];
    if (ra.name != rb.name) {
      report(where + "result " + std::to_string(i) + " is \"" + ra.name + "\" in unit a, \"" +
             rb.name + "\" in unit b");
      continue;
    }
    if (ra.values.size() != rb.values.size()) {
      report(where + ra.name + ": " + std::to_string(ra.values.size()) + " vs " +
             std::to_string(rb.values.size()) + " values");
      continue;
    }
    for (std::size_t j = 0; j < ra.values.size(); ++j) {
      const double x = ra.values[j], y = rb.values[j];
      const bool agree = ra.tolerance == 0.0
                             ? same_bits(x, y)
                             : std::fabs(x - y) <= ra.tolerance * std::max(1.0, std::fabs(x));
      if (!agree) {
        char buffer[160];
        std::snprintf(buffer, sizeof buffer, "value %zu: unit a %.17g, unit b %.17g", j, x, y);
        report(where + ra.name + ": " + buffer);
        break;
      }
    }
  }
  // Agreement is not enough: pin select_top_k to the contract as well.
  const struct {
    const char* name;
    std::vector<double> expected;
  } references[] = {
      {"select_top_k<float>", reference_top_k<float>(in, false)},
      {"select_top_k<float>(lengths)", reference_top_k<float>(in, true)},
      {"select_top_k<double>", reference_top_k<double>(in, false)},
      {"select_top_k<double>(lengths)", reference_top_k<double>(in, true)},
  };
  for (const auto& ref : references) {
    const odr::Record* got = find(a, ref.name);
    if (got == nullptr)
      report(where + ref.name + ": missing");
    else if (got->values != ref.expected)
      report(where + ref.name + ": differs from the reference top-k");
  }
}

}  // namespace

int main() {
#if defined(ODR_REQUIRE_AVX2) && (defined(__x86_64__) || defined(__i386__))
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
    std::printf("SKIP: this CPU lacks AVX2/FMA, which unit a was compiled for\n");
    return 77;
  }
#endif
  const std::vector<odr::Input> inputs = {
      make_input("tiny", 2, 7, 3, 3, 0.5, {7, 4}, 1),
      make_input("odd sizes", 3, 37, 19, 5, 0.125, {37, 20, 0}, 2),
      make_input("vector width", 2, 64, 16, 8, 0.25, {}, 3),
      make_input("k >= S", 1, 5, 4, 9, 1.0, {3}, 4),
      make_input("k = 0", 2, 9, 5, 0, 0.1, {}, 5),
      make_input("paper: 512 of 4096", 2, 4096, 24, 512, 0.125, {4096, 3000}, 6),
  };
  for (const auto& in : inputs) {
    const odr::Output a = odr::run_a(in);
    const odr::Output b = odr::run_b(in);
    if (&in == &inputs.front())
      std::printf("unit a compiled for %s, unit b for %s\n", a.arch.c_str(), b.arch.c_str());
    compare(in, a, b);
    std::printf("%-20s %zu results compared\n", in.name.c_str(), a.records.size());
  }
  if (failures != 0) {
    std::printf("%d failure(s)\n", failures);
    return 1;
  }
  std::printf("both translation units agree\n");
  return 0;
}
