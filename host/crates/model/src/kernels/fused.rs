//! Fused training ops (CPU, f32) with hand-written backward passes.
//!
//! Why: candle's autograd accumulates every gradient contribution as `zeros_like + add` and keeps
//! every intermediate of a composed op alive until backward. A LoRA projection composed of
//! candle ops is ~6 graph nodes, an RMSNorm ~7, a rotary embedding ~10, a masked softmax ~8; on
//! SmolLM2-135M that was most of a training step's time outside the matmuls (page faults,
//! memsets, elementwise passes) and most of its memory. Each op here is one graph node that
//! stores only its inputs, computes its forward in one pass (matmuls straight into the output
//! buffer through `gemm`) and returns exact analytic gradients.
//!
//! Devices: every op here has a CPU forward only (f32 activations; frozen weights in f32, bf16 or
//! f16) except [`FrozenLinear`], which also runs on CUDA (cuBLAS through candle's own matmul).
//! The structs are private and every public function refuses other inputs ([`cpu_f32`]); the
//! decoder calls them only behind `mode_ops::fused_train` or the same device test, and takes
//! composed candle ops (logged once, `crate::kernels::composed`) everywhere else. So a CPU-only op is
//! unreachable off the CPU by construction, never a silent wrong result.

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Storage, Tensor,
};
use rayon::prelude::*;

use crate::kernels::half_matmul::{self, with_weight, WeightRef};
use crate::kernels::matmul::{matmul_wt, sgemm};

mod attention;
pub use attention::causal_attention;

/// Elements per rayon task in the elementwise loops: large enough to amortise scheduling.
const CHUNK: usize = 1 << 14;

/// The contiguous f32 data of a CPU storage.
fn slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        (CpuStorage::F32(_), None) => bail!("{op}: input must be contiguous"),
        _ => bail!("{op}: only f32 on cpu"),
    }
}

/// Runs `f` on the contiguous f32 CPU data of `t` (copying only if `t` is not contiguous).
fn with_data<R>(t: &Tensor, op: &str, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (st, l) = t.storage_and_layout();
    match &*st {
        Storage::Cpu(s) => f(slice(s, l, op)?),
        _ => bail!("{op}: only on cpu"),
    }
}

/// The guard at the entry of every CPU-only op: activations must be f32 on the CPU.
fn cpu_f32(x: &Tensor, op: &str) -> Result<()> {
    if !x.device().is_cpu() || x.dtype() != candle_core::DType::F32 {
        bail!(
            "{op} is a CPU f32 op, called with {:?} on {}: the caller must dispatch other \
             devices and dtypes to candle ops",
            x.dtype(),
            crate::kernels::composed::device_kind(x.device())
        );
    }
    Ok(())
}

fn tensor(v: Vec<f32>, shape: impl Into<Shape>) -> Result<Tensor> {
    Tensor::from_vec(v, shape, &candle_core::Device::Cpu)
}

/// `y (n, out) = [y +] x (n, k) @ w^T` for a frozen weight in any of its formats.
fn weight_product(
    n: usize,
    out: usize,
    k: usize,
    y: &mut [f32],
    accumulate: bool,
    x: &[f32],
    w: WeightRef,
) {
    match w {
        WeightRef::F32(w) => matmul_wt(n, out, k, y, accumulate, x, w),
        WeightRef::Half(w) => half_matmul::matmul_wt(n, k, x, w, y, accumulate),
    }
}

/// `dx (n, k) = g (n, out) @ w` for a frozen weight (out, k) in any of its formats.
fn input_gradient(n: usize, out: usize, k: usize, g: &[f32], w: WeightRef, dx: &mut [f32]) {
    match w {
        WeightRef::F32(w) => sgemm(n, k, out, dx, false, g, false, w, false, 1.0),
        WeightRef::Half(w) => half_matmul::matmul_nn(n, out, g, w, dx, false),
    }
}

/// `x @ w^T + bias + scale * ((x * mask) @ a^T) @ b^T`: a linear layer with a frozen weight `w`
/// (out, in) and a LoRA pair `a` (r, in), `b` (out, r), one node. Backward gives `x`, `a`, `b`
/// their gradients and never forms a weight-sized gradient for `w`.
struct LoraLinear {
    w: Tensor,
    bias: Option<Tensor>,
    scale: f32,
    /// Inverted-dropout mask on the LoRA branch's input, (n, in).
    mask: Option<Tensor>,
}

impl LoraLinear {
    /// `x * mask` when dropout is on.
    fn dropped(&self, x: &[f32]) -> Result<Option<Vec<f32>>> {
        match &self.mask {
            None => Ok(None),
            Some(m) => with_data(m, "lora-linear", |m| {
                if m.len() != x.len() {
                    bail!("lora-linear: dropout mask does not match the input");
                }
                Ok(Some(x.iter().zip(m).map(|(a, b)| a * b).collect()))
            }),
        }
    }
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, inp) = l1.shape().dims2()?;
        let (r, inp2) = l2.shape().dims2()?;
        let (out, r2) = l3.shape().dims2()?;
        if inp != inp2 || r != r2 || self.w.dims() != [out, inp] {
            bail!("lora-linear: shapes x {n}x{inp}, a {r}x{inp2}, b {out}x{r2} do not match w");
        }
        let (x, a, b) = (
            slice(s1, l1, self.name())?,
            slice(s2, l2, self.name())?,
            slice(s3, l3, self.name())?,
        );
        let mut y = vec![0f32; n * out];
        let has_bias = match &self.bias {
            Some(bias) => with_data(bias, self.name(), |bias| {
                y.chunks_mut(out).for_each(|row| row.copy_from_slice(bias));
                Ok(true)
            })?,
            None => false,
        };
        with_weight(&self.w, |w| {
            weight_product(n, out, inp, &mut y, has_bias, x, w);
            Ok(())
        })?;
        let xd = self.dropped(x)?;
        let xd = xd.as_deref().unwrap_or(x);
        let mut xa = vec![0f32; n * r];
        sgemm(n, r, inp, &mut xa, false, xd, false, a, true, 1.0);
        sgemm(n, out, r, &mut y, true, &xa, false, b, true, self.scale);
        Ok((CpuStorage::F32(y), Shape::from((n, out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, inp) = x.dims2()?;
        let (r, _) = a.dims2()?;
        let (out, _) = b.dims2()?;
        let s = self.scale;
        let needs_dx = x.track_op();
        with_data(x, self.name(), |x| {
            with_data(a, self.name(), |a| {
                with_data(b, self.name(), |b| {
                    with_data(g, self.name(), |g| {
                        with_weight(&self.w, |w| {
                            // gb = g @ b: the gradient at the LoRA bottleneck, (n, r).
                            let mut gb = vec![0f32; n * r];
                            sgemm(n, r, out, &mut gb, false, g, false, b, false, 1.0);
                            let xd = self.dropped(x)?;
                            // The first layer's input is no variable's descendant: no dx.
                            let dx = if needs_dx {
                                let mut dx = vec![0f32; n * inp];
                                input_gradient(n, out, inp, g, w, &mut dx);
                                match &self.mask {
                                    None => {
                                        sgemm(n, inp, r, &mut dx, true, &gb, false, a, false, s)
                                    }
                                    Some(m) => {
                                        let mut t = vec![0f32; n * inp];
                                        sgemm(n, inp, r, &mut t, false, &gb, false, a, false, s);
                                        with_data(m, self.name(), |m| {
                                            dx.iter_mut()
                                                .zip(t.iter().zip(m))
                                                .for_each(|(d, (t, m))| *d += t * m);
                                            Ok(())
                                        })?;
                                    }
                                }
                                Some(tensor(dx, (n, inp))?)
                            } else {
                                None
                            };
                            let xd = xd.as_deref().unwrap_or(x);
                            let mut da = vec![0f32; r * inp];
                            sgemm(r, inp, n, &mut da, false, &gb, true, xd, false, s);
                            let mut xa = vec![0f32; n * r];
                            sgemm(n, r, inp, &mut xa, false, xd, false, a, true, 1.0);
                            let mut db = vec![0f32; out * r];
                            sgemm(out, r, n, &mut db, false, g, true, &xa, false, s);
                            Ok((dx, Some(tensor(da, (r, inp))?), Some(tensor(db, (out, r))?)))
                        })
                    })
                })
            })
        })
    }
}

/// `x (n, in) @ w^T + bias + scale * ((x * mask) @ a^T) @ b^T` as one autograd node. CPU f32
/// only; off the CPU the decoder runs [`frozen_linear`] plus the LoRA branch as candle ops.
pub fn lora_linear(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    mask: Option<Tensor>,
) -> Result<Tensor> {
    cpu_f32(x, "lora-linear")?;
    x.contiguous()?.apply_op3(
        &a.contiguous()?,
        &b.contiguous()?,
        LoraLinear {
            w: w.detach(),
            bias: bias.map(Tensor::detach),
            scale: scale as f32,
            mask,
        },
    )
}

/// `x @ w^T` for a frozen `w`, and a backward that returns only the input gradient `g @ w`
/// (candle's matmul backward would also form a weight-sized gradient for `w`, and allocate it).
/// CPU: the output written by gemm straight into its buffer (f32 activations, any weight
/// format). CUDA: cuBLAS through candle's storage matmul (activations and weight of one dtype),
/// the backward as a candle matmul on the device.
struct FrozenLinear {
    w: Tensor,
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, k) = l.shape().dims2()?;
        let (out, k2) = self.w.dims2()?;
        if k != k2 {
            bail!("frozen-linear: input has {k} features, weight {k2}");
        }
        let x = slice(s, l, self.name())?;
        let mut y = vec![0f32; n * out];
        with_weight(&self.w, |w| {
            weight_product(n, out, k, &mut y, false, x, w);
            Ok(())
        })?;
        Ok((CpuStorage::F32(y), Shape::from((n, out))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let (n, k) = l.shape().dims2()?;
        let (out, k2) = self.w.dims2()?;
        if k != k2 {
            bail!("frozen-linear: input has {k} features, weight {k2}");
        }
        let wt = self.w.t()?;
        let (ws, wl) = wt.storage_and_layout();
        let Storage::Cuda(ws) = &*ws else {
            bail!("frozen-linear: input on cuda, weight on another device");
        };
        let y = s.matmul(ws, (1, n, out, k), l, wl)?;
        Ok((y, Shape::from((n, out))))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        if !g.device().is_cpu() {
            return Ok(Some(g.matmul(&self.w)?));
        }
        let (n, out) = g.dims2()?;
        let (_, k) = self.w.dims2()?;
        let mut dx = vec![0f32; n * k];
        with_data(g, self.name(), |g| {
            with_weight(&self.w, |w| {
                input_gradient(n, out, k, g, w, &mut dx);
                Ok(())
            })
        })?;
        Ok(Some(tensor(dx, (n, k))?))
    }
}

/// `x (n, in) @ w^T` with only an input gradient: CPU f32 activations (any weight format), or
/// CUDA activations of the weight's dtype (with the `cuda` feature).
pub fn frozen_linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if !frozen_linear_runs_on(x, w) {
        cpu_f32(x, "frozen-linear")?;
    }
    x.contiguous()?.apply_op1(FrozenLinear { w: w.detach() })
}

/// Whether [`frozen_linear`] has a kernel for these operands.
pub fn frozen_linear_runs_on(x: &Tensor, w: &Tensor) -> bool {
    match x.device() {
        candle_core::Device::Cpu => x.dtype() == candle_core::DType::F32 && w.device().is_cpu(),
        candle_core::Device::Cuda(_) => {
            cfg!(feature = "cuda") && w.device().same_device(x.device()) && w.dtype() == x.dtype()
        }
        candle_core::Device::Metal(_) => false,
    }
}

/// RMSNorm over the last dimension with a frozen weight.
struct RmsNorm {
    w: Tensor,
    eps: f32,
}

fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let ms = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
    1.0 / (ms + eps).sqrt()
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        let d = l.shape().dims().last().copied().unwrap_or(0);
        let mut y = vec![0f32; x.len()];
        with_data(&self.w, self.name(), |w| {
            if w.len() != d {
                bail!("rms-norm: weight of {} for rows of {d}", w.len());
            }
            let rows = (CHUNK / d.max(1)).max(1);
            y.par_chunks_mut(rows * d)
                .zip(x.par_chunks(rows * d))
                .for_each(|(y, x)| {
                    for (y, x) in y.chunks_mut(d).zip(x.chunks(d)) {
                        let r = inv_rms(x, self.eps);
                        for ((y, x), w) in y.iter_mut().zip(x).zip(w) {
                            *y = x * r * w;
                        }
                    }
                });
            Ok(())
        })?;
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    /// `dx = r (g w) - x r^3 mean(g w x)` with `r = 1 / rms(x)`.
    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let d = x.dims().last().copied().unwrap_or(0);
        let mut dx = vec![0f32; x.elem_count()];
        with_data(x, self.name(), |x| {
            with_data(g, self.name(), |g| {
                with_data(&self.w, self.name(), |w| {
                    let rows = (CHUNK / d.max(1)).max(1);
                    dx.par_chunks_mut(rows * d)
                        .zip(x.par_chunks(rows * d).zip(g.par_chunks(rows * d)))
                        .for_each(|(dx, (x, g))| {
                            for (dx, (x, g)) in dx.chunks_mut(d).zip(x.chunks(d).zip(g.chunks(d))) {
                                let r = inv_rms(x, self.eps);
                                let dot: f32 =
                                    x.iter().zip(g).zip(w).map(|((x, g), w)| x * g * w).sum();
                                let c = r * r * r * dot / d as f32;
                                for (((dx, x), g), w) in dx.iter_mut().zip(x).zip(g).zip(w) {
                                    *dx = r * g * w - x * c;
                                }
                            }
                        });
                    Ok(())
                })
            })
        })?;
        Ok(Some(tensor(dx, x.shape().clone())?))
    }
}

/// RMSNorm of `x` over its last dimension, frozen weight `w`. CPU f32 only (elsewhere:
/// `rms_norm_slow`).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    cpu_f32(x, "rms-norm")?;
    x.contiguous()?.apply_op1(RmsNorm {
        w: w.detach(),
        eps: eps as f32,
    })
}

/// Non-interleaved (HF) rotary embedding of x (b, h, s, d) with tables (s, d/2). Its backward is
/// the rotation by the opposite angle.
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    fn rotate(&self, x: &[f32], dims: &[usize], sign: f32) -> Result<Vec<f32>> {
        let (s, d) = (dims[2], dims[3]);
        let half = d / 2;
        if d % 2 != 0 || self.cos.dims() != [s, half] || self.sin.dims() != [s, half] {
            bail!(
                "rope: tables {:?} for {s} positions of {d}",
                self.cos.dims()
            );
        }
        let mut y = vec![0f32; x.len()];
        with_data(&self.cos, "rope", |cos| {
            with_data(&self.sin, "rope", |sin| {
                y.par_chunks_mut(s * d)
                    .zip(x.par_chunks(s * d))
                    .for_each(|(y, x)| {
                        for t in 0..s {
                            let (c, sn) = (&cos[t * half..][..half], &sin[t * half..][..half]);
                            let (x, y) = (&x[t * d..][..d], &mut y[t * d..][..d]);
                            for i in 0..half {
                                let (x1, x2, sn) = (x[i], x[i + half], sign * sn[i]);
                                y[i] = x1 * c[i] - x2 * sn;
                                y[i + half] = x2 * c[i] + x1 * sn;
                            }
                        }
                    });
                Ok(())
            })
        })?;
        Ok(y)
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = l.shape().dims4()?;
        let y = self.rotate(
            slice(s, l, self.name())?,
            &[dims.0, dims.1, dims.2, dims.3],
            1.0,
        )?;
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let dx = with_data(g, self.name(), |g| self.rotate(g, x.dims(), -1.0))?;
        Ok(Some(tensor(dx, x.shape().clone())?))
    }
}

/// RoPE on x (b, h, s, d) with cos/sin (s, d/2). CPU f32 only (elsewhere: rotate-half as
/// candle ops).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    cpu_f32(x, "rope")?;
    x.contiguous()?.apply_op1(Rope {
        cos: cos.contiguous()?,
        sin: sin.contiguous()?,
    })
}

/// `silu(gate) * up`, the SwiGLU MLP activation.
struct SwiGlu;

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            bail!(
                "swiglu: gate {:?} and up {:?} differ",
                l1.shape(),
                l2.shape()
            );
        }
        let (g, u) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?);
        let mut y = vec![0f32; g.len()];
        y.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
            .for_each(|(y, (g, u))| crate::kernels::simd::silu_mul(g, u, y));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = gate.elem_count();
        let (mut dg, mut du) = (vec![0f32; n], vec![0f32; n]);
        with_data(gate, self.name(), |g| {
            with_data(up, self.name(), |u| {
                with_data(grad, self.name(), |gr| {
                    dg.par_chunks_mut(CHUNK)
                        .zip(du.par_chunks_mut(CHUNK))
                        .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
                        .zip(gr.par_chunks(CHUNK))
                        .for_each(|(((dg, du), (g, u)), gr)| {
                            for i in 0..g.len() {
                                let sg = sigmoid(g[i]);
                                du[i] = gr[i] * g[i] * sg;
                                dg[i] = gr[i] * u[i] * sg * (1.0 + g[i] * (1.0 - sg));
                            }
                        });
                    Ok(())
                })
            })
        })?;
        Ok((
            Some(tensor(dg, gate.shape().clone())?),
            Some(tensor(du, up.shape().clone())?),
        ))
    }
}

/// `silu(gate) * up` as one node. CPU f32 only (elsewhere: candle's silu and mul).
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    cpu_f32(gate, "swiglu")?;
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Value and every input gradient of `fused` equal those of the composed candle `reference`
    /// under a random upstream gradient.
    fn check(
        inputs: &[Tensor],
        fused: impl Fn(&[Tensor]) -> Tensor,
        reference: impl Fn(&[Tensor]) -> Tensor,
        tol: f32,
    ) {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let (yf, yr) = (fused(&ts), reference(&ts));
        assert!(max_diff(&yf, &yr) < tol, "value: {}", max_diff(&yf, &yr));
        let up = randn(yf.dims(), 99);
        let gf = (&yf * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = (&yr * &up).unwrap().sum_all().unwrap().backward().unwrap();
        for (i, t) in ts.iter().enumerate() {
            let (a, b) = (gf.get(t).unwrap(), gr.get(t).unwrap());
            assert!(max_diff(a, b) < tol, "grad {i}: {}", max_diff(a, b));
        }
    }

    #[test]
    fn lora_linear_matches_composed_with_and_without_dropout() {
        let (n, inp, out, r) = (7, 13, 11, 3);
        let w = randn(&[out, inp], 1);
        let bias = randn(&[out], 2);
        let mask = Tensor::from_vec(
            (0..n * inp)
                .map(|i| if i % 5 == 0 { 0.0 } else { 1.25 })
                .collect::<Vec<f32>>(),
            (n, inp),
            &Device::Cpu,
        )
        .unwrap();
        for m in [None, Some(mask)] {
            let inputs = [
                randn(&[n, inp], 3),
                randn(&[r, inp], 4),
                randn(&[out, r], 5),
            ];
            check(
                &inputs,
                |t| lora_linear(&t[0], &w, Some(&bias), &t[1], &t[2], 0.7, m.clone()).unwrap(),
                |t| {
                    let xd = match &m {
                        Some(m) => (&t[0] * m).unwrap(),
                        None => t[0].clone(),
                    };
                    let base = t[0].matmul(&w.t().unwrap()).unwrap();
                    let base = base.broadcast_add(&bias).unwrap();
                    let d = xd
                        .matmul(&t[1].t().unwrap())
                        .unwrap()
                        .matmul(&t[2].t().unwrap())
                        .unwrap();
                    (base + (d * 0.7).unwrap()).unwrap()
                },
                1e-4,
            );
        }
    }

    #[test]
    fn rms_norm_rope_attention_swiglu_match_composed() {
        let w = randn(&[8], 6);
        check(
            &[randn(&[2, 3, 8], 7)],
            |t| rms_norm(&t[0], &w, 1e-5).unwrap(),
            |t| candle_nn::ops::rms_norm_slow(&t[0], &w, 1e-5).unwrap(),
            1e-4,
        );
        let (s, d) = (5, 8);
        let cos = randn(&[s, d / 2], 8);
        let sin = randn(&[s, d / 2], 9);
        check(
            &[randn(&[2, 3, s, d], 10)],
            |t| rope(&t[0], &cos, &sin).unwrap(),
            |t| candle_nn::rotary_emb::rope_slow(&t[0], &cos, &sin).unwrap(),
            1e-5,
        );
        // Two query heads per key/value head, queries following 2 cached keys; a second
        // key/value head and a second row make the blocks' offsets matter.
        let (past, s, hd) = (2, 4, 8);
        let l = past + s;
        let mask: Vec<f32> = (0..2 * s)
            .flat_map(|r| {
                (0..l).map(move |j| {
                    if j > past + r % s {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (2 * s, l), &Device::Cpu).unwrap();
        check(
            &[
                randn(&[2, 2, 2 * s, hd], 11),
                randn(&[2, 2, l, hd], 14),
                randn(&[2, 2, l, hd], 15),
            ],
            |t| causal_attention(&t[0], &t[1], &t[2], 0.5, s).unwrap(),
            |t| {
                let scores = (t[0].matmul(&t[1].t().unwrap()).unwrap() * 0.5).unwrap();
                let p = candle_nn::ops::softmax(&scores.broadcast_add(&mask).unwrap(), D::Minus1)
                    .unwrap();
                p.matmul(&t[2]).unwrap()
            },
            1e-5,
        );
        check(
            &[randn(&[4, 9], 12), randn(&[4, 9], 13)],
            |t| swiglu(&t[0], &t[1]).unwrap(),
            |t| (candle_nn::ops::silu(&t[0]).unwrap() * &t[1]).unwrap(),
            1e-5,
        );
    }
}
