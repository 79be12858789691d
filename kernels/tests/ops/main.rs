//! Tests of the op set: literal cases worked out by hand, finite-difference gradient checks,
//! shape/index errors, and bit-identical results across thread counts. Each test is written once,
//! generic over [`koala_kernels::Backend`], and instantiated for the CPU backend by `cpu_tests!`.
mod common;

mod adamw;
mod attention;
mod cross_entropy;
mod determinism;
mod embedding;
mod matmul;
mod norm;
mod residual;
mod rmsnorm;
mod rope;
mod swiglu;
mod torch_fixtures;
