#pragma once
// Arena<T>: scratch memory that a block function takes from its workspace. Once it has seen
// the largest request pattern it never allocates: every cycle between reset() calls reuses
// one chunk. Also detail::CacheLineAllocator, the 64-byte-aligned allocator of Workspace's
// row buffers (and of the row benchmarks'), since chunks and those buffers share the rule.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "types.hpp"

namespace mixdepth {

template <class T>
class Arena {
 public:
  static constexpr std::size_t alignment = 64;  // bytes: a cache line, a full AVX-512 vector

  // A position to rewind to: everything taken after mark() is released by rewind().
  struct Mark {
    std::size_t chunk;
    Index used;
  };

  Arena() { chunks_.reserve(16); }
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  // A moved-from arena is empty and usable (the defaulted moves left its position behind,
  // past the end of its now empty chunk list).
  Arena(Arena&& other) noexcept
      : chunks_(std::move(other.chunks_)),
        current_(std::exchange(other.current_, std::size_t{0})),
        used_(std::exchange(other.used_, Index{0})),
        capacity_(std::exchange(other.capacity_, Index{0})) {
    other.chunks_.clear();
  }
  Arena& operator=(Arena&& other) noexcept {
    if (this != &other) {
      chunks_ = std::move(other.chunks_);
      current_ = std::exchange(other.current_, std::size_t{0});
      used_ = std::exchange(other.used_, Index{0});
      capacity_ = std::exchange(other.capacity_, Index{0});
      other.chunks_.clear();
    }
    return *this;
  }

  // n elements aligned to `alignment`, valid until the matching rewind() or reset().
  // Contents are unspecified.
  std::span<T> take(Index n) {
    if (n < 0) detail::fail("Arena::take", "n", ">= 0", n);
    const Index padded = round_up(n);
    while (current_ < chunks_.size() && chunks_[current_].size - used_ < padded) {
      ++current_;
      used_ = 0;
    }
    if (current_ == chunks_.size()) {
      const Index last = chunks_.empty() ? Index{0} : chunks_.back().size;
      chunks_.push_back(Chunk::make(std::max(padded, 2 * last)));
      capacity_ += chunks_.back().size;
      used_ = 0;
    }
    T* start = chunks_[current_].data + used_;
    used_ += padded;
    return {start, static_cast<std::size_t>(n)};
  }

  // A rows x cols row-major matrix over take(rows * cols).
  RowMatrixMap<T> matrix(Index rows, Index cols) {
    return RowMatrixMap<T>(take(rows * cols).data(), rows, cols);
  }

  // A rows x cols row-major matrix whose rows each start on a cache line, aligned_stride(cols)
  // elements apart. Eigen's vectorised element-wise loops peel a row's first elements until
  // it reaches an aligned address, so over rows that all start aligned they split every row
  // alike: an element's result (exp's, whose vector and scalar forms round differently)
  // then depends on its column, never on which row or which matrix it is in.
  StridedRowMatrixMap<T> aligned_rows(Index rows, Index cols) {
    if (rows < 0) detail::fail("Arena::aligned_rows", "rows", ">= 0", rows);
    if (cols < 0) detail::fail("Arena::aligned_rows", "cols", ">= 0", cols);
    const Index stride = aligned_stride(cols);
    return StridedRowMatrixMap<T>(take(rows * stride).data(), rows, cols, Eigen::OuterStride<>(stride));
  }
  // cols rounded up to whole cache lines.
  static Index aligned_stride(Index cols) { return round_up(cols); }
  // cols rounded up to an odd number of whole cache lines (0 for 0): the stride for rows
  // that are read down a column, a few elements from each row. Rows an even number of lines
  // apart (a multiple of 4 KiB, at worst) crowd into a few cache sets; an odd number spreads
  // them over all of them.
  static Index spread_stride(Index cols) {
    constexpr Index line = static_cast<Index>(alignment / sizeof(T) > 0 ? alignment / sizeof(T) : 1);
    const Index stride = round_up(cols);
    return (stride / line) % 2 == 0 && stride > 0 ? stride + line : stride;
  }

  Mark mark() const { return {current_, used_}; }
  // Back to a mark of this arena. A mark taken before a reset() that merged the chunks may
  // name a chunk that no longer exists: that throws mixdepth::Error (it would index past the
  // chunk list) and changes nothing.
  void rewind(Mark m) {
    const bool exists = m.chunk < chunks_.size() ? m.used >= 0 && m.used <= chunks_[m.chunk].size
                                                 : m.chunk == chunks_.size() && m.used == 0;
    if (!exists)
      detail::fail("Arena::rewind", "m", "a mark within this arena's " + std::to_string(chunks_.size()) + " chunk(s)",
                   "chunk " + std::to_string(m.chunk) + ", offset " + std::to_string(m.used));
    current_ = m.chunk;
    used_ = m.used;
  }

  // Releases everything. When the last cycle needed more than one chunk, they become one
  // chunk as large as all of them: from then on the same cycle allocates nothing. Never
  // throws: if that chunk cannot be allocated, the old ones stay (a cycle reuses them in
  // turn) and the next reset() tries again. (Block resets after its function returned, when
  // a throw would leave a function that keeps state, such as a CachedAttention, changed.)
  void reset() noexcept {
    if (chunks_.size() > 1) {
      try {
        Chunk whole = Chunk::make(capacity_);  // before the old ones go
        chunks_.clear();
        chunks_.push_back(std::move(whole));  // no allocation: the list held more than one
      } catch (const std::bad_alloc&) {
      }
    }
    current_ = 0;
    used_ = 0;
  }

  // Elements held (what a cycle may take without allocating).
  Index capacity() const { return capacity_; }

 private:
  static Index round_up(Index n) {
    constexpr Index step = static_cast<Index>(alignment / sizeof(T) > 0 ? alignment / sizeof(T) : 1);
    return (n + step - 1) / step * step;
  }

  struct Chunk {
    std::unique_ptr<std::byte[]> storage;
    T* data = nullptr;
    Index size = 0;
    static Chunk make(Index size) {
      Chunk c;
      const std::size_t bytes = static_cast<std::size_t>(size) * sizeof(T) + alignment;
      // Left uninitialised, as take() promises nothing of the contents: zeroing would write
      // (and fault in) the whole chunk up front, and the chunk that reset() merges after a
      // long prefill can be hundreds of megabytes of which a decode step touches a little.
      c.storage = std::make_unique_for_overwrite<std::byte[]>(bytes);
#ifdef MIXDEPTH_POISON_SCRATCH
      // For tests: all-ones bytes, a NaN in every float and double, so that a result which
      // read scratch before writing it is wrong rather than accidentally zero.
      std::memset(c.storage.get(), 0xFF, bytes);
#endif
      const auto address = reinterpret_cast<std::uintptr_t>(c.storage.get());
      c.data = reinterpret_cast<T*>((address + alignment - 1) / alignment * alignment);
      c.size = size;
      return c;
    }
  };

  std::vector<Chunk> chunks_;
  std::size_t current_ = 0;
  Index used_ = 0;
  Index capacity_ = 0;  // the sum of the chunks' sizes
};

namespace detail {

// The standard allocator's interface, with every block starting on a cache line (64 bytes,
// as Arena's chunks and Eigen's AVX-512 allocations do). Workspace's row buffers use it: the
// row kernels copy fastest when source and destination lie alike against a line, and a
// plain vector starts wherever the allocator's history puts it (bench/README.md).
template <class T>
struct CacheLineAllocator {
  using value_type = T;
  static constexpr std::align_val_t line{64};
  CacheLineAllocator() = default;
  template <class U>
  CacheLineAllocator(const CacheLineAllocator<U>&) noexcept {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), line)); }
  void deallocate(T* p, std::size_t) noexcept { ::operator delete(p, line); }
  template <class U>
  bool operator==(const CacheLineAllocator<U>&) const noexcept {
    return true;
  }
};

template <class T>
using LineAlignedVector = std::vector<T, CacheLineAllocator<T>>;

}  // namespace detail

}  // namespace mixdepth
