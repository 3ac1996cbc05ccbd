// GroupNorm (+ SiLU) over the last axis of x [N, H, W, C], forward and backward, for the CPU.
//
// The same math as diffusion_lib.networks.layers.tensorflow_group_norm, in one pass structure
// per example instead of a chain of elementwise ops: the forward reads x three times (the mean,
// the variance about it, the output) and writes y once; the backward reads x and dy once for its
// sums, then writes dx. Sums over pixels are float32 within blocks of 64 pixels and double across
// blocks; the statistics are float32 for any input dtype (float32 or bfloat16). Each example is
// computed by one thread in a fixed order, so results are the same bits whatever the number of
// threads; the parameters' gradients are summed over examples in order after all are done.
//
// Built at first use by diffusion_lib.kernels (g++ and TensorFlow's headers).

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

#include "Eigen/Core"

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

namespace {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

using Flat = Eigen::Map<Eigen::ArrayXf>;
// Scratch memory aligned as Eigen's widest packets: its vectorised functions (the sigmoid) then
// take the same path at every element whatever the call, so an example's bits do not depend
// on where its data sits in the batch.
using Scratch = std::vector<float, Eigen::aligned_allocator<float>>;

template <typename T>
Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>> ConstFlatOf(const T* data, int64_t size) {
  return Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(data, size);
}

// x as float32: the data itself when it is float32, else converted into `buffer`.
inline const float* AsFloat(const float* x, float*, int64_t) { return x; }
inline const float* AsFloat(const tensorflow::bfloat16* x, float* buffer, int64_t size) {
  Flat(buffer, size) = ConstFlatOf(x, size).template cast<float>();
  return buffer;
}

template <typename T>
void Store(const Flat& values, T* out) {
  Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>(out, values.size()) = values.template cast<T>();
}

// Pixels summed in float32 before their sum is added to the double total: vectorised over
// channels, and accurate at any image size.
constexpr int64_t kBlock = 64;

// totals[c] = sum over pixels p of term(p * channels + c, c), in pixel order; `block` holds
// `channels` floats of scratch.
template <typename Term>
void ChannelTotals(int64_t pixels, int64_t channels, double* __restrict totals,
                   float* __restrict block, Term term) {
  std::fill(totals, totals + channels, 0.0);
  for (int64_t start = 0; start < pixels; start += kBlock) {
    const int64_t stop = std::min(pixels, start + kBlock);
    std::fill(block, block + channels, 0.0f);
    for (int64_t p = start; p < stop; ++p)
      for (int64_t c = 0; c < channels; ++c) block[c] += term(p * channels + c, c);
    for (int64_t c = 0; c < channels; ++c) totals[c] += block[c];
  }
}

// out[p, c] = x[p, c] * scale[c] + shift[c].
void Affine(const float* __restrict x, const float* __restrict scale,
            const float* __restrict shift, int64_t pixels, int64_t channels,
            float* __restrict out) {
  for (int64_t p = 0; p < pixels; ++p)
    for (int64_t c = 0; c < channels; ++c)
      out[p * channels + c] = x[p * channels + c] * scale[c] + shift[c];
}

// d[p, c] = d[p, c] * scale[c] + (x[p, c] * slope[c] + offset[c]), in place.
void Combine(float* __restrict d, const float* __restrict x, const float* __restrict scale,
             const float* __restrict slope, const float* __restrict offset, int64_t pixels,
             int64_t channels) {
  for (int64_t p = 0; p < pixels; ++p)
    for (int64_t c = 0; c < channels; ++c) {
      const int64_t i = p * channels + c;
      d[i] = d[i] * scale[c] + (x[i] * slope[c] + offset[c]);
    }
}

// Checks shared by both kernels; sets n, pixels and channels.
absl::Status CheckShapes(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                         int64_t groups, int64_t* n, int64_t* pixels, int64_t* channels) {
  if (x.dims() != 4)
    return absl::InvalidArgumentError("GroupNorm: x must be [N, H, W, C], got rank " +
                                      std::to_string(x.dims()));
  *n = x.dim_size(0);
  *pixels = x.dim_size(1) * x.dim_size(2);
  *channels = x.dim_size(3);
  if (*channels % groups != 0)
    return absl::InvalidArgumentError("GroupNorm: " + std::to_string(*channels) +
                                      " channels do not split into " + std::to_string(groups) +
                                      " groups");
  if (gamma.NumElements() != *channels || beta.NumElements() != *channels)
    return absl::InvalidArgumentError("GroupNorm: gamma and beta must have C elements");
  return absl::OkStatus();
}

void ForEachExample(OpKernelContext* ctx, int64_t n, int64_t cost,
                    const std::function<void(int64_t, int64_t)>& work) {
  auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
  tensorflow::Shard(workers->num_threads, workers->workers, n, cost, work);
}

template <typename T>
class GroupNormOp : public OpKernel {
 public:
  explicit GroupNormOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("groups", &groups_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("epsilon", &epsilon_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("silu", &silu_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& gamma = ctx->input(1);
    const Tensor& beta = ctx->input(2);
    int64_t n, pixels, channels;
    OP_REQUIRES_OK(ctx, CheckShapes(x, gamma, beta, groups_, &n, &pixels, &channels));
    Tensor* y = nullptr;
    Tensor* mean = nullptr;
    Tensor* inv = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &y));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({n, groups_}), &mean));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({n, groups_}), &inv));
    const T* xs = x.flat<T>().data();
    const float* g = gamma.flat<float>().data();
    const float* b = beta.flat<float>().data();
    T* ys = y->flat<T>().data();
    float* means = mean->flat<float>().data();
    float* invs = inv->flat<float>().data();
    const int64_t groups = groups_, per_group = channels / groups_, size = pixels * channels;
    const double count = static_cast<double>(pixels * per_group);
    const float epsilon = epsilon_;
    const bool silu = silu_;

    auto work = [&](int64_t begin, int64_t end) {
      Scratch loaded(std::is_same<T, float>::value ? 0 : size), out(size);
      std::vector<double> sums(channels);
      std::vector<float> block(channels), channel_mean(channels), scale(channels), shift(channels);
      for (int64_t e = begin; e < end; ++e) {
        const float* xe = AsFloat(xs + e * size, loaded.data(), size);
        ChannelTotals(pixels, channels, sums.data(), block.data(),
                      [xe](int64_t i, int64_t) { return xe[i]; });
        for (int64_t k = 0; k < groups; ++k) {
          double s = 0.0;
          for (int64_t c = k * per_group; c < (k + 1) * per_group; ++c) s += sums[c];
          const float m = static_cast<float>(s / count);
          means[e * groups + k] = m;
          for (int64_t c = k * per_group; c < (k + 1) * per_group; ++c) channel_mean[c] = m;
        }
        const float* centre = channel_mean.data();
        auto squared = [xe, centre](int64_t i, int64_t c) {
          const float d = xe[i] - centre[c];
          return d * d;
        };
        ChannelTotals(pixels, channels, sums.data(), block.data(), squared);
        for (int64_t k = 0; k < groups; ++k) {
          double s = 0.0;
          for (int64_t c = k * per_group; c < (k + 1) * per_group; ++c) s += sums[c];
          const float r = 1.0f / std::sqrt(static_cast<float>(s / count) + epsilon);
          invs[e * groups + k] = r;
          for (int64_t c = k * per_group; c < (k + 1) * per_group; ++c) {
            scale[c] = r * g[c];
            shift[c] = b[c] - channel_mean[c] * scale[c];
          }
        }
        Affine(xe, scale.data(), shift.data(), pixels, channels, out.data());
        Flat y_flat(out.data(), size);
        if (silu) y_flat = y_flat * y_flat.logistic();
        Store(y_flat, ys + e * size);
      }
    };
    ForEachExample(ctx, n, pixels * channels * (silu ? 40 : 20), work);
  }

 private:
  int64_t groups_;
  float epsilon_;
  bool silu_;
};

template <typename T>
class GroupNormGradOp : public OpKernel {
 public:
  explicit GroupNormGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("groups", &groups_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("silu", &silu_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& dy = ctx->input(0);
    const Tensor& x = ctx->input(1);
    const Tensor& gamma = ctx->input(2);
    const Tensor& beta = ctx->input(3);
    const Tensor& mean = ctx->input(4);
    const Tensor& inv = ctx->input(5);
    int64_t n, pixels, channels;
    OP_REQUIRES_OK(ctx, CheckShapes(x, gamma, beta, groups_, &n, &pixels, &channels));
    OP_REQUIRES(ctx, dy.shape() == x.shape(),
                absl::InvalidArgumentError("GroupNormGrad: dy and x differ in shape"));
    OP_REQUIRES(ctx, mean.NumElements() == n * groups_ && inv.NumElements() == n * groups_,
                absl::InvalidArgumentError("GroupNormGrad: mean and inv must be [N, groups]"));
    Tensor* dx = nullptr;
    Tensor* dgamma = nullptr;
    Tensor* dbeta = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &dx));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({channels}), &dgamma));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({channels}), &dbeta));
    const T* dys = dy.flat<T>().data();
    const T* xs = x.flat<T>().data();
    const float* g = gamma.flat<float>().data();
    const float* b = beta.flat<float>().data();
    const float* means = mean.flat<float>().data();
    const float* invs = inv.flat<float>().data();
    T* dxs = dx->flat<T>().data();
    const int64_t groups = groups_, per_group = channels / groups_, size = pixels * channels;
    const bool silu = silu_;
    // Per example and channel: the sums over pixels of dy and of xhat * dy, for gamma's and
    // beta's gradients, added up over examples in order once every example is done.
    std::vector<double> part_gamma(n * channels), part_beta(n * channels);

    auto work = [&](int64_t begin, int64_t end) {
      const bool same = std::is_same<T, float>::value;
      Scratch loaded_x(same ? 0 : size), upstream(size), gate(silu ? size : 0);
      std::vector<double> sum_dy(channels), sum_xdy(channels);
      std::vector<float> block(channels);
      std::vector<float> scale(channels), shift(channels), slope(channels), offset(channels);
      for (int64_t e = begin; e < end; ++e) {
        const float* xe = AsFloat(xs + e * size, loaded_x.data(), size);
        for (int64_t c = 0; c < channels; ++c) {
          const float m = means[e * groups + c / per_group];
          scale[c] = invs[e * groups + c / per_group] * g[c];
          shift[c] = b[c] - m * scale[c];
        }
        Flat d(upstream.data(), size);
        d = ConstFlatOf(dys + e * size, size).template cast<float>();
        if (silu) {  // d silu(y) / dy = s (1 + y (1 - s)), s = sigmoid(y), y recomputed
          Affine(xe, scale.data(), shift.data(), pixels, channels, gate.data());
          Flat y(gate.data(), size);
          y = y.logistic() * (1.0f + y * (1.0f - y.logistic()));
          d *= y;
        }
        const float* up = upstream.data();
        ChannelTotals(pixels, channels, sum_dy.data(), block.data(),
                      [up](int64_t i, int64_t) { return up[i]; });
        ChannelTotals(pixels, channels, sum_xdy.data(), block.data(),
                      [xe, up](int64_t i, int64_t) { return xe[i] * up[i]; });
        // dx = inv (dxhat - mean_g(dxhat) - xhat mean_g(dxhat xhat)), dxhat = dy gamma, as
        // dx = dy scale + x slope + offset per group.
        for (int64_t k = 0; k < groups; ++k) {
          const float m = means[e * groups + k], r = invs[e * groups + k];
          double d_mean = 0.0, d_var = 0.0;
          for (int64_t c = k * per_group; c < (k + 1) * per_group; ++c) {
            const double mean_dy = sum_dy[c] / pixels;
            const double xhat_dy = r * (sum_xdy[c] / pixels - m * mean_dy);
            d_mean += g[c] * mean_dy;
            d_var += g[c] * xhat_dy;
            part_gamma[e * channels + c] = xhat_dy * pixels;
            part_beta[e * channels + c] = sum_dy[c];
          }
          d_mean /= per_group;
          d_var /= per_group;
          const float s = static_cast<float>(-static_cast<double>(r) * r * d_var);
          const float o = static_cast<float>(-r * d_mean - s * static_cast<double>(m));
          for (int64_t c = k * per_group; c < (k + 1) * per_group; ++c) {
            slope[c] = s;
            offset[c] = o;
          }
        }
        Combine(upstream.data(), xe, scale.data(), slope.data(), offset.data(), pixels, channels);
        Store(d, dxs + e * size);
      }
    };
    ForEachExample(ctx, n, pixels * channels * (silu ? 50 : 25), work);
    float* dg = dgamma->flat<float>().data();
    float* db = dbeta->flat<float>().data();
    for (int64_t c = 0; c < channels; ++c) {
      double sg = 0.0, sb = 0.0;
      for (int64_t e = 0; e < n; ++e) {
        sg += part_gamma[e * channels + c];
        sb += part_beta[e * channels + c];
      }
      dg[c] = static_cast<float>(sg);
      db[c] = static_cast<float>(sb);
    }
  }

 private:
  int64_t groups_;
  bool silu_;
};

}  // namespace

REGISTER_OP("DiffusionGroupNorm")
    .Input("x: T")
    .Input("gamma: float")
    .Input("beta: float")
    .Output("y: T")
    .Output("mean: float")
    .Output("inv: float")
    .Attr("T: {float, bfloat16}")
    .Attr("groups: int >= 1")
    .Attr("epsilon: float")
    .Attr("silu: bool = false")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle x;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &x));
      int64_t groups;
      TF_RETURN_IF_ERROR(c->GetAttr("groups", &groups));
      c->set_output(0, x);
      auto stats = c->Matrix(c->Dim(x, 0), groups);
      c->set_output(1, stats);
      c->set_output(2, stats);
      return absl::OkStatus();
    });

REGISTER_OP("DiffusionGroupNormGrad")
    .Input("dy: T")
    .Input("x: T")
    .Input("gamma: float")
    .Input("beta: float")
    .Input("mean: float")
    .Input("inv: float")
    .Output("dx: T")
    .Output("dgamma: float")
    .Output("dbeta: float")
    .Attr("T: {float, bfloat16}")
    .Attr("groups: int >= 1")
    .Attr("silu: bool = false")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle x;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 4, &x));
      c->set_output(0, x);
      c->set_output(1, c->Vector(c->Dim(x, 3)));
      c->set_output(2, c->Vector(c->Dim(x, 3)));
      return absl::OkStatus();
    });

#define REGISTER(T)                                                                           \
  REGISTER_KERNEL_BUILDER(                                                                    \
      Name("DiffusionGroupNorm").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T"),       \
      GroupNormOp<T>);                                                                        \
  REGISTER_KERNEL_BUILDER(                                                                    \
      Name("DiffusionGroupNormGrad").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T"),   \
      GroupNormGradOp<T>);

REGISTER(float)
REGISTER(tensorflow::bfloat16)
