#pragma once
// Decoder<T>: a stack of pre-norm transformer layers (GQA attention with RoPE, SwiGLU MLP)
// in which chosen layers are Mixture-of-Depths blocks, with a MoD-aware KV cache per layer,
// for autoregressive decoding (README.md, Semantics). MoD layers route by top-k over a whole
// prompt, or causally (a CausalPredictor, or the router's logit) token by token; a token a
// layer skips never enters that layer's cache.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "../block.hpp"
#include "../kv_cache.hpp"
#include "../predictor.hpp"
#include "attention.hpp"
#include "cached_attention.hpp"
#include "mlp.hpp"

namespace mixdepth::layers {

struct DecoderConfig {
  Index layers = 8;
  AttentionConfig attention;
  SwiGluConfig mlp;
  double capacity = 0.125;       // top-k capacity of the MoD layers
  Index mod_every = 2;           // layer l is MoD when (l + 1) % mod_every == 0; 0: none
  Index predictor_hidden = 64;   // width of each MoD layer's causal predictor
  Gate gate = Gate::identity;
};

// How MoD layers route: top-k over each sequence (not causal: prompts, training), or a
// causal rule, the layer's predictor or its router's logit (`r > threshold`).
enum class Routing { top_k, predictor, router };

template <class T>
class Decoder {
  // A block function that calls an MLP it does not own.
  struct MlpView {
    const SwiGluMlp<T>* mlp;
    void operator()(const Routed<T>& in, MatrixRef<T> out) const { (*mlp)(in, out); }
  };
  struct AttentionView {
    const Attention<T>* attention;
    void operator()(const Routed<T>& in, MatrixRef<T> out) const { (*attention)(in, out); }
  };
  using CachedLayer = Sequential<CachedAttention<T>, MlpView>;
  using UncachedLayer = Sequential<AttentionView, MlpView>;

  struct Layer {
    Layer(const DecoderConfig& c, bool routed_layer, std::uint64_t seed)
        : attention(Attention<T>::random(c.attention, seed)),
          mlp(SwiGluMlp<T>::random(c.mlp, seed + 1)),
          cache(0, c.attention.kv_width(), 0),
          routed(routed_layer),
          predictor(c.attention.d_model, c.predictor_hidden, Activation::silu, seed + 2),
          router_threshold{T(0)},
          cached(Router<T>(random_router(c.attention.d_model, seed + 3)), Capacity::fraction(c.capacity),
                 CachedLayer(CachedAttention<T>(attention, cache), MlpView{&mlp}), c.gate),
          uncached(cached.router(), Capacity::fraction(c.capacity),
                   UncachedLayer(AttentionView{&attention}, MlpView{&mlp}), c.gate) {}
    Layer(const Layer&) = delete;
    Layer& operator=(const Layer&) = delete;

    static Vector<T> random_router(Index d, std::uint64_t seed) {
      NormalSource normal(seed);
      Vector<T> w(d);
      for (Index i = 0; i < d; ++i) w(i) = static_cast<T>(normal() / std::sqrt(double(d)));
      return w;
    }

    Attention<T> attention;
    SwiGluMlp<T> mlp;
    KvCache<T> cache;
    bool routed;
    CausalPredictor<T> predictor;
    RouterThreshold<T> router_threshold;
    Block<T, CachedLayer> cached;      // fills and reads `cache`
    Block<T, UncachedLayer> uncached;  // the same layer without a cache (full-sequence forward)
    long visits = 0, routed_visits = 0;  // decode steps through this layer, and how many routed
  };

 public:
  Decoder(DecoderConfig config, std::uint64_t seed) : config_(config) {
    if (config.layers < 1) detail::fail("Decoder", "config.layers", ">= 1", config.layers);
    if (config.mod_every < 0) detail::fail("Decoder", "config.mod_every", ">= 0", config.mod_every);
    if (!(config.capacity > 0.0 && config.capacity <= 1.0))
      detail::fail("Decoder", "config.capacity", "in (0, 1]", config.capacity);
    if (config.predictor_hidden < 1) detail::fail("Decoder", "config.predictor_hidden", ">= 1", config.predictor_hidden);
    detail::require_equal("Decoder", "config.mlp.d_model", config.attention.d_model, config.mlp.d_model);
    for (Index l = 0; l < config.layers; ++l) {
      const bool routed = config.mod_every > 0 && (l + 1) % config.mod_every == 0;
      layers_.push_back(std::make_unique<Layer>(config, routed, seed + 10 * std::uint64_t(l)));
    }
    routed_this_step_.assign(layers_.size(), 0);
  }

  const DecoderConfig& config() const { return config_; }
  Index layers() const { return static_cast<Index>(layers_.size()); }
  Index dim() const { return config_.attention.d_model; }
  bool is_routed(Index l) const { return layer(l).routed; }
  CausalPredictor<T>& predictor(Index l) { return layer(l).predictor; }
  RouterThreshold<T>& router_threshold(Index l) { return layer(l).router_threshold; }
  const Router<T>& router(Index l) const { return layer(l).cached.router(); }
  const Attention<T>& attention(Index l) const { return layer(l).attention; }
  const SwiGluMlp<T>& mlp(Index l) const { return layer(l).mlp; }
  const KvCache<T>& cache(Index l) const { return layer(l).cache; }
  Index batch() const { return static_cast<Index>(positions_.size()); }
  // Tokens each sequence has seen: the position its next token takes.
  std::span<const Index> positions() const { return positions_; }

  // Empties the caches and makes room for `batch` sequences: `dense_tokens` per sequence in
  // dense layers, `routed_tokens` in MoD layers (a MoD layer caches only what it routed).
  // Allocates the caches. After it, a prefill allocates two buffers of its prompt's size (and
  // the workspace grows to its needs), and steps allocate nothing once one has run: only a
  // context longer than the workspace has room for grows its scratch once more, to double
  // (a step keeps one row of scores per query head of a KV head's group: at d = 512 with 4
  // query heads to a KV head, thousands of tokens past the prompt; fewer with larger
  // groups). Bad arguments throw before anything changes, and so does a failed allocation:
  // everything new is built before the decoder takes it.
  void reset(Index batch, Index dense_tokens, Index routed_tokens) {
    constexpr std::string_view where = "Decoder::reset";
    if (batch < 1) detail::fail(where, "batch", ">= 1", batch);
    if (dense_tokens < 0) detail::fail(where, "dense_tokens", ">= 0", dense_tokens);
    if (routed_tokens < 0) detail::fail(where, "routed_tokens", ">= 0", routed_tokens);
    std::vector<KvCache<T>> caches;
    caches.reserve(layers_.size());
    for (const auto& l : layers_)
      caches.emplace_back(batch, config_.attention.kv_width(), l->routed ? routed_tokens : dense_tokens);
    std::vector<Index> positions(std::size_t(batch), 0);
    Checkpoint rollback{std::vector<Index>(layers_.size() * std::size_t(batch), 0), positions, epoch_ + 1, 0};
    std::vector<std::vector<Rewind>> rewinds(static_cast<std::size_t>(batch));
    RowMatrix<T> step_in(batch, dim()), step_out(batch, dim());
    // Nothing throws from here on.
    for (std::size_t i = 0; i < layers_.size(); ++i) {
      layers_[i]->cache = std::move(caches[i]);
      layers_[i]->visits = layers_[i]->routed_visits = 0;
    }
    positions_.swap(positions);
    std::swap(rollback_, rollback);
    rewinds_.swap(rewinds);
    rewind_count_ = 0;
    step_in_.swap(step_in);
    step_out_.swap(step_out);
    ++epoch_;
  }

  // Runs the prompt x ([batch * seq_len, d], padding after lengths[b]) through every layer,
  // filling the caches from empty; y gets the last layer's output. MoD layers route by
  // `routing`. If `layer_inputs` is given, it receives each layer's input (for training and
  // calibrating predictors). On any error the caches, positions and layer_inputs are left as
  // they were.
  void prefill(MatrixCRef<T> x, Shape shape, MatrixRef<T> y, Routing routing,
               std::span<const Index> lengths = {}, std::vector<RowMatrix<T>>* layer_inputs = nullptr) {
    constexpr std::string_view where = "Decoder::prefill";
    require_reset(where);
    detail::require_equal(where, "shape.batch", batch(), shape.batch);
    for (Index b = 0; b < batch(); ++b)
      if (layer(0).cache.size(b) != 0 || positions_[std::size_t(b)] != 0)
        detail::fail(where, "positions()[" + std::to_string(b) + "]", "0 (prefill starts from empty caches; call reset)",
                     positions_[std::size_t(b)]);
    save_into(rollback_);
    try {
      run_layers(x, shape, y, routing, lengths, {}, layer_inputs, /*cached=*/true);
    } catch (...) {
      restore(rollback_);
      throw;
    }
    for (Index b = 0; b < batch(); ++b) positions_[std::size_t(b)] = lengths.empty() ? shape.seq_len : lengths[b];
  }

  // One decode step: x holds one new token per sequence ([batch, d]); every MoD layer routes
  // it causally (`routing` must not be top_k). y gets the last layer's output; layer_inputs,
  // if given, each layer's input. On any error the caches, positions and layer_inputs are
  // left as they were.
  void step(MatrixCRef<T> x, MatrixRef<T> y, Routing routing,
            std::vector<RowMatrix<T>>* layer_inputs = nullptr) {
    constexpr std::string_view where = "Decoder::step";
    require_reset(where);
    if (routing == Routing::top_k)
      detail::fail(where, "routing", "Routing::predictor or Routing::router (top-k is not causal)", "Routing::top_k");
    detail::require_equal(where, "x.rows() (one token per sequence)", batch(), x.rows());
    detail::require_equal(where, "x.cols()", dim(), x.cols());
    detail::require_equal(where, "y.rows()", batch(), y.rows());
    detail::require_equal(where, "y.cols()", dim(), y.cols());
    save_into(rollback_);
    try {
      run_layers(x, Shape{batch(), 1}, y, routing, {}, positions_, layer_inputs, /*cached=*/true);
    } catch (...) {
      restore(rollback_);
      throw;
    }
    for (auto& p : positions_) ++p;
  }

  // The same stack over whole sequences without any cache: MoD layers route by `routing`
  // (top-k, or the causal rules token by token). With finite inputs and weights, decoding
  // step by step with a causal rule gives these outputs bit for bit, and so the same routing
  // decisions, however the sequence is split into prefill and steps: a step's one-row
  // products run through the same kernel as the forward's many-row ones (each coefficient
  // depends only on its row and column; the predictor's output layer included), attention
  // scores a decoding query with the same products (over the cache's keys by feature, the
  // transpose the forward makes of its keys) and softmax, and element-wise functions see
  // every row start on a cache line (Arena::aligned_rows). (A NaN's sign may differ, and a
  // value that is infinite in some cached token makes the forward add masked rows one by
  // one.)
  // Does not touch the caches. On any error y and layer_inputs are left as they were.
  void forward(MatrixCRef<T> x, Shape shape, MatrixRef<T> y, Routing routing, std::span<const Index> lengths = {},
               std::vector<RowMatrix<T>>* layer_inputs = nullptr) {
    run_layers(x, shape, y, routing, lengths, {}, layer_inputs, /*cached=*/false);
  }

  // A point to return to: every cache's size and every position. restore() drops what was
  // appended since (benchmarks decode from the same context again; speculative decoding).
  struct Checkpoint {
    std::vector<Index> sizes;
    std::vector<Index> positions;
    std::uint64_t epoch = 0;    // which reset() the decoder had had (restore() checks it)
    std::uint64_t rewinds = 0;  // restore() calls that had taken a sequence back, since that reset()
  };
  Checkpoint checkpoint() const {
    Checkpoint c;
    save_into(c);
    return c;
  }
  // Requires a checkpoint of this decoder since its last reset() on the current line of
  // decoding: every size and position at most the current one, and no sequence taken back
  // below its checkpointed position since the checkpoint (a checkpoint of a branch that was
  // abandoned by restoring an earlier one). The test is by position and is conservative: a
  // sequence that went back and then decoded the very same tokens again, or whose dropped
  // tokens no cache had kept (every layer MoD and none routed them), still counts as having
  // left the checkpoint's branch. All of it is checked, and throws mixdepth::Error, before
  // anything changes; so does std::bad_alloc from the room made for the new rewind record.
  void restore(const Checkpoint& c) {
    constexpr std::string_view where = "Decoder::restore";
    const std::size_t batch_size = std::size_t(batch());
    detail::require_equal(where, "checkpoint.sizes.size() (layers * batch)", Index(layers_.size() * batch_size),
                          Index(c.sizes.size()));
    detail::require_equal(where, "checkpoint.positions.size() (batch)", batch(), Index(c.positions.size()));
    if (c.epoch != epoch_)
      detail::fail(where, "checkpoint.epoch",
                   std::to_string(epoch_) + " (a checkpoint taken since the last reset())", c.epoch);
    for (std::size_t l = 0; l < layers_.size(); ++l)
      for (std::size_t b = 0; b < batch_size; ++b) {
        const Index size = c.sizes[l * batch_size + b], now = layers_[l]->cache.size(Index(b));
        if (size < 0 || size > now)
          detail::fail(where, "checkpoint.sizes[" + std::to_string(l * batch_size + b) + "]",
                       "in [0, " + std::to_string(now) + "] (layer " + std::to_string(l) + "'s cache of sequence " +
                           std::to_string(b) + " now)",
                       size);
      }
    for (std::size_t b = 0; b < batch_size; ++b)
      if (c.positions[b] < 0 || c.positions[b] > positions_[b])
        detail::fail(where, "checkpoint.positions[" + std::to_string(b) + "]",
                     "in [0, " + std::to_string(positions_[b]) + "]", c.positions[b]);
    if (c.rewinds > rewind_count_)
      detail::fail(where, "checkpoint.rewinds",
                   "<= " + std::to_string(rewind_count_) + " (restores that took a sequence back, so far)",
                   c.rewinds);
    bool rewinding = false;
    for (std::size_t b = 0; b < batch_size; ++b) {
      const auto& past = rewinds_[b];
      // The lowest position sequence b went back to since the checkpoint: the first of the
      // later rewinds (positions ascend along the list).
      const auto later = std::upper_bound(past.begin(), past.end(), c.rewinds,
                                          [](std::uint64_t at, const Rewind& r) { return at < r.index; });
      if (later != past.end() && later->position < c.positions[b])
        detail::fail(where, "checkpoint",
                     "one on the current line of decoding (sequence " + std::to_string(b) +
                         " has not gone back below its position " + std::to_string(c.positions[b]) + " since)",
                     "one of an abandoned branch: sequence " + std::to_string(b) + " went back to position " +
                         std::to_string(later->position) + " after it");
      rewinding = rewinding || c.positions[b] < positions_[b];
    }
    // A rewind to a position hides the earlier ones at or above it (a checkpoint older than
    // both is judged by the lower): those records go. Room for the new one is made first, so
    // that nothing throws once the caches change, and only when the list grows, so that going
    // back to the same point again and again allocates nothing after the first time.
    for (std::size_t b = 0; b < batch_size; ++b)
      if (c.positions[b] < positions_[b]) rewinds_[b].reserve(kept_rewinds(b, c.positions[b]) + 1);
    for (std::size_t l = 0; l < layers_.size(); ++l)
      for (std::size_t b = 0; b < batch_size; ++b) layers_[l]->cache.truncate(Index(b), c.sizes[l * batch_size + b]);
    if (rewinding) {
      ++rewind_count_;
      for (std::size_t b = 0; b < batch_size; ++b) {
        if (c.positions[b] >= positions_[b]) continue;
        rewinds_[b].resize(kept_rewinds(b, c.positions[b]));
        rewinds_[b].push_back(Rewind{rewind_count_, c.positions[b]});
      }
    }
    std::copy(c.positions.begin(), c.positions.end(), positions_.begin());
  }

  // Bytes the caches hold, all layers.
  std::size_t kv_bytes() const {
    std::size_t total = 0;
    for (const auto& l : layers_) total += l->cache.bytes();
    return total;
  }
  // Decode steps through MoD layers, and how many of them routed the token (steps that
  // threw are not counted).
  long routed_layer_visits() const { return sum(&Layer::visits); }
  long routed_layer_routed() const { return sum(&Layer::routed_visits); }

 private:
  Layer& layer(Index l) {
    if (l < 0 || l >= layers()) detail::fail("Decoder", "layer", "in [0, " + std::to_string(layers()) + ")", l);
    return *layers_[std::size_t(l)];
  }
  const Layer& layer(Index l) const { return const_cast<Decoder*>(this)->layer(l); }

  void require_reset(std::string_view where) const {
    if (positions_.empty()) detail::fail(where, "decoder", "reset(batch, ...) called first", "no reset");
  }

  // How many of sequence b's rewind records stay when it goes back to `position`: those
  // below it.
  std::size_t kept_rewinds(std::size_t b, Index position) const {
    const auto& past = rewinds_[b];
    std::size_t kept = past.size();
    while (kept > 0 && past[kept - 1].position >= position) --kept;
    return kept;
  }

  long sum(long Layer::*field) const {
    long total = 0;
    for (const auto& l : layers_) total += (*l).*field;
    return total;
  }

  // Every cache's size and every position, into c's own storage: no allocation once c has
  // held this decoder's shape (rollback_, sized by reset()).
  void save_into(Checkpoint& c) const {
    c.sizes.resize(layers_.size() * std::size_t(batch()));
    for (std::size_t l = 0; l < layers_.size(); ++l)
      for (Index b = 0; b < batch(); ++b) c.sizes[l * std::size_t(batch()) + std::size_t(b)] = layers_[l]->cache.size(b);
    c.positions.assign(positions_.begin(), positions_.end());
    c.epoch = epoch_;
    c.rewinds = rewind_count_;
  }

  template <class B>
  void run_layer(Layer& l, B& block, MatrixCRef<T> in, Shape shape, MatrixRef<T> out, Routing routing,
                 std::span<const Index> lengths, std::span<const Index> starts) {
    if (!l.routed) {
      // The dense layer goes through the same function with every token routed, gate 1.
      forward_dense<T>(block.function(), in, shape, out, workspace_, lengths, starts);
      return;
    }
    switch (routing) {
      case Routing::top_k: block.forward(in, shape, out, workspace_, lengths); break;
      case Routing::predictor: block.forward_causal(in, shape, out, workspace_, l.predictor, lengths, starts); break;
      case Routing::router: block.forward_causal(in, shape, out, workspace_, l.router_threshold, lengths, starts); break;
    }
  }

  void run_layers(MatrixCRef<T> x, Shape shape, MatrixRef<T> y, Routing routing, std::span<const Index> lengths,
                  std::span<const Index> starts, std::vector<RowMatrix<T>>* layer_inputs, bool cached) {
    const Index rows = mixdepth::detail::checked_rows("Decoder", shape);
    detail::require_equal("Decoder", "x.rows()", rows, x.rows());
    detail::require_equal("Decoder", "x.cols()", dim(), x.cols());
    detail::require_equal("Decoder", "y.rows()", rows, y.rows());
    detail::require_equal("Decoder", "y.cols()", dim(), y.cols());
    // Each layer's input is collected here and handed over only when every layer has run,
    // so that an error leaves the caller's vector as it was.
    std::vector<RowMatrix<T>> inputs;
    if (layer_inputs) inputs.reserve(layers_.size());
    // Ping-pong between two buffers; steps reuse the ones reset() sized.
    const bool step_buffers = rows == step_in_.rows() && starts.size() > 0;
    RowMatrix<T> own_a, own_b;
    if (!step_buffers) {
      own_a.resize(rows, dim());
      own_b.resize(rows, dim());
    }
    T* current = step_buffers ? step_in_.data() : own_a.data();
    T* next = step_buffers ? step_out_.data() : own_b.data();
    RowMatrixMap<T>(current, rows, dim()) = x;
    const bool decode_step = cached && !starts.empty();
    for (std::size_t i = 0; i < layers_.size(); ++i) {
      Layer& l = *layers_[i];
      RowMatrixMap<T> in(current, rows, dim()), out(next, rows, dim());
      if (layer_inputs) inputs.push_back(in);
      if (cached)
        run_layer(l, l.cached, in, shape, out, routing, lengths, starts);
      else
        run_layer(l, l.uncached, in, shape, out, routing, lengths, starts);
      if (decode_step && l.routed) routed_this_step_[i] = static_cast<long>(workspace_.routed_rows().size());
      std::swap(current, next);
    }
    // Counted once every layer has run, so that a step that threw counts nothing.
    if (decode_step)
      for (std::size_t i = 0; i < layers_.size(); ++i)
        if (layers_[i]->routed) {
          layers_[i]->visits += rows;
          layers_[i]->routed_visits += routed_this_step_[i];
        }
    y = RowMatrixMap<T>(current, rows, dim());
    if (layer_inputs) layer_inputs->swap(inputs);
  }

  DecoderConfig config_;
  std::vector<std::unique_ptr<Layer>> layers_;
  std::vector<Index> positions_;
  Checkpoint rollback_;  // where a prefill or step that throws returns to
  std::uint64_t epoch_ = 0;  // reset() calls so far: a checkpoint belongs to one of them
  // A restore() that took sequences back below their positions: the how-manieth such restore
  // since reset() it was, and where one sequence went.
  struct Rewind {
    std::uint64_t index;
    Index position;
  };
  // Per sequence, the rewinds a checkpoint could be older than, index and position
  // ascending; at most one per position.
  std::vector<std::vector<Rewind>> rewinds_;
  std::uint64_t rewind_count_ = 0;
  std::vector<long> routed_this_step_;  // per layer: rows the current step routed
  RowMatrix<T> step_in_, step_out_;
  Workspace<T> workspace_;
};

}  // namespace mixdepth::layers
