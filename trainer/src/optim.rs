//! AdamW (through the backend's fused op), global-norm gradient clipping, and the HF Trainer
//! rule that 1-D weights (the RMSNorm gains) get no weight decay.
use koala_kernels::{AdamWParams, Backend};

use crate::Result;
use crate::model::Llama;
use crate::weights::{HostTensor, Tensors};

/// AdamW state: first and second moments per parameter, and the step count.
pub struct AdamW<B: Backend> {
    pub m: Vec<B::Buf>,
    pub v: Vec<B::Buf>,
    /// Optimizer steps taken so far.
    pub step: u64,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Max global gradient norm (0 = no clipping).
    pub grad_clip: f32,
}

impl<B: Backend> AdamW<B> {
    /// Zero moments for every parameter of `model`.
    pub fn new(
        be: &B,
        model: &Llama<B>,
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
        grad_clip: f32,
    ) -> Result<Self> {
        let mut m = Vec::with_capacity(model.specs.len());
        let mut v = Vec::with_capacity(model.specs.len());
        for s in &model.specs {
            m.push(be.zeros_f32(s.numel())?);
            v.push(be.zeros_f32(s.numel())?);
        }
        Ok(AdamW {
            m,
            v,
            step: 0,
            beta1,
            beta2,
            eps,
            weight_decay,
            grad_clip,
        })
    }

    /// The global L2 norm of all gradients (`Σ` in `f64`, fixed order).
    pub fn grad_norm(be: &B, model: &Llama<B>) -> Result<f64> {
        let mut ss = 0.0f64;
        for g in &model.grads {
            ss += be.sum_squares(g)?;
        }
        Ok(ss.sqrt())
    }

    /// One optimizer step at learning rate `lr`; returns the pre-clip global gradient norm.
    /// Clipping follows `torch.nn.utils.clip_grad_norm_`: scale `min(1, clip / (norm + 1e-6))`.
    pub fn update(&mut self, be: &B, model: &mut Llama<B>, lr: f32) -> Result<f64> {
        let norm = Self::grad_norm(be, model)?;
        let grad_scale = self.clip_scale(norm);
        self.step += 1;
        for (i, spec) in model.specs.iter().enumerate() {
            let hp = self.params_for(&spec.shape, lr, grad_scale);
            be.adamw_step(
                &mut model.params[i],
                &model.grads[i],
                &mut self.m[i],
                &mut self.v[i],
                &hp,
            )?;
        }
        Ok(norm)
    }

    /// The gradient scale for a pre-clip global norm, as `torch.nn.utils.clip_grad_norm_`:
    /// `min(1, clip / (norm + 1e-6))`, or 1 without clipping.
    pub fn clip_scale(&self, norm: f64) -> f32 {
        if self.grad_clip > 0.0 {
            (self.grad_clip as f64 / (norm + 1e-6)).min(1.0) as f32
        } else {
            1.0
        }
    }

    /// The kernel parameters of the current step (`self.step`, already advanced) for a tensor
    /// of `shape`: no weight decay on 1-D tensors (norm weights), as the reference trainers.
    pub fn params_for(&self, shape: &[usize], lr: f32, grad_scale: f32) -> AdamWParams {
        AdamWParams {
            lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: if shape.len() >= 2 {
                self.weight_decay
            } else {
                0.0
            },
            step: self.step,
            grad_scale,
        }
    }

    /// The moments as host tensors named `m.<param>` / `v.<param>` (for checkpoints).
    pub fn to_tensors(&self, be: &B, model: &Llama<B>) -> Result<Tensors> {
        let mut out = Tensors::new();
        for (i, s) in model.specs.iter().enumerate() {
            out.insert(
                format!("m.{}", s.name),
                HostTensor {
                    shape: s.shape.clone(),
                    data: be.download(&self.m[i])?,
                },
            );
            out.insert(
                format!("v.{}", s.name),
                HostTensor {
                    shape: s.shape.clone(),
                    data: be.download(&self.v[i])?,
                },
            );
        }
        Ok(out)
    }

    /// Restores the moments saved by [`AdamW::to_tensors`].
    pub fn load_tensors(&mut self, be: &B, model: &Llama<B>, t: &Tensors, step: u64) -> Result<()> {
        for (i, s) in model.specs.iter().enumerate() {
            for (prefix, dst) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let name = format!("{prefix}.{}", s.name);
                let h = t.get(&name).ok_or_else(|| {
                    crate::Error::Invalid(format!("optimizer state lacks {name}"))
                })?;
                if h.shape != s.shape {
                    return Err(crate::Error::Invalid(format!(
                        "optimizer state {name}: shape {:?}",
                        h.shape
                    )));
                }
                *dst = be.upload_f32(&h.data)?;
            }
        }
        self.step = step;
        Ok(())
    }
}
