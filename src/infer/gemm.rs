//! The native runtime's matrix product: `C = A·B (+ C)`, single precision, row-major, **without
//! packing**, so it allocates nothing.
//!
//! General GEMM libraries copy ("pack") both operands into panels before every product; on the
//! FNO's shapes (one dimension 20–64, another up to 4096) that copying took as long as the
//! multiplying (a profile of the native step: 28 % packing, 28 % kernel), and the packing space
//! was allocated per product. Here every operand is read in place: a tile of `MR` rows × `NR`
//! columns of `C` stays in registers while the inner dimension runs, each row of `B`'s tile is
//! loaded once per step (contiguous: `B` is row-major) and each element of `A` is broadcast. With
//! the inner dimension short, a tile of `B` sits in L1 for every row block that reuses it.
//!
//! The kernel is one generic body compiled three times: for AVX-512 (tiles of 8 × 32), for AVX2
//! with FMA (6 × 16), and portable (4 × 8); the CPU is asked at each product which to run (a
//! cached flag).

// The only unsafe code: calling the kernel compiled for a CPU extension after checking at run
// time that the CPU has it.
#![allow(unsafe_code)]

/// Multiply–add with or without a fused instruction.
trait Madd {
    fn madd(acc: f32, a: f32, b: f32) -> f32;
}

/// `a·b + acc` rounded once (compiled to FMA where the target has it).
struct Fused;

impl Madd for Fused {
    #[inline(always)]
    fn madd(acc: f32, a: f32, b: f32) -> f32 {
        a.mul_add(b, acc)
    }
}

/// `a·b + acc` rounded twice (no FMA: `mul_add` would call the slow software routine).
struct Plain;

impl Madd for Plain {
    #[inline(always)]
    fn madd(acc: f32, a: f32, b: f32) -> f32 {
        acc + a * b
    }
}

/// `c[..m×n] = a[..m×k]·b[..k×n] (+ c when accumulate)`, all row-major and contiguous.
pub fn gemm(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32], accumulate: bool) {
    assert!(
        a.len() >= m * k && b.len() >= k * n && c.len() >= m * n,
        "gemm operands out of bounds: {m}×{k} by {k}×{n} with {}, {} and {} values",
        a.len(),
        b.len(),
        c.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above), all this function needs.
            return unsafe { gemm_avx512(m, k, n, a, b, c, accumulate) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA (checked just above), all this function needs.
            return unsafe { gemm_avx2(m, k, n, a, b, c, accumulate) };
        }
    }
    body::<Plain, 4, 8, 8, 8>(m, k, n, a, b, c, accumulate);
}

/// AVX-512: tiles of up to 4 rows × 32 columns, in explicit vector instructions; the columns
/// left over by one tile of 16, then by one masked tile.
/// Runs `f` inside a function compiled for AVX-512 (or AVX2 and FMA) when the CPU has it, so
/// the element-wise loops inlined into it vectorise at that width (the crate itself is compiled
/// for the baseline x86-64, 4 lanes).
#[inline(always)]
pub fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above), all this function needs.
            return unsafe { run_avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA (checked just above), all this function needs.
            return unsafe { run_avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn run_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn run_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn gemm_avx512(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32], acc: bool) {
    let mut i = 0;
    while i < m {
        let rows = (m - i).min(4);
        match rows {
            4 => avx512::rows::<4>(i, k, n, a, b, c, acc),
            3 => avx512::rows::<3>(i, k, n, a, b, c, acc),
            2 => avx512::rows::<2>(i, k, n, a, b, c, acc),
            _ => avx512::rows::<1>(i, k, n, a, b, c, acc),
        }
        i += rows;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::{
        __m512, _mm512_fmadd_ps, _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps, _mm512_set1_ps,
        _mm512_setzero_ps,
    };

    /// Rows `i..i + R` of `C`, every column: tiles of 32 columns, then 16, then a masked one.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) fn rows<const R: usize>(
        i: usize,
        k: usize,
        n: usize,
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
        accumulate: bool,
    ) {
        let mut j = 0;
        while j + 32 <= n {
            tile::<R, 2>(i, j, k, n, a, b, c, accumulate, 0xffff);
            j += 32;
        }
        if j + 16 <= n {
            tile::<R, 1>(i, j, k, n, a, b, c, accumulate, 0xffff);
            j += 16;
        }
        if j < n {
            tile::<R, 1>(i, j, k, n, a, b, c, accumulate, (1u16 << (n - j)) - 1);
        }
    }

    /// `R` rows × `V` vectors of 16 columns of `C` at `(i, j)`, accumulated in registers; the
    /// last vector covers only the columns set in `last` (a tile cut by the matrix's edge).
    #[inline]
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    fn tile<const R: usize, const V: usize>(
        i: usize,
        j: usize,
        k: usize,
        n: usize,
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
        accumulate: bool,
        last: u16,
    ) {
        let width = 16 * (V - 1) + last.count_ones() as usize;
        assert!(last != 0 && (last as u32 + 1).is_power_of_two());
        assert!(j + width <= n && (i + R) * n <= c.len() && (i + R) * k <= a.len());
        assert!(k == 0 || (k - 1) * n + j + width <= b.len());
        let mask = |v: usize| if v + 1 == V { last } else { 0xffff };
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        // SAFETY (every load and store below): the asserts above keep each access, of 16
        // values or of the masked ones, inside its slice.
        unsafe {
            if accumulate {
                for r in 0..R {
                    for v in 0..V {
                        let at = c.as_ptr().add((i + r) * n + j + 16 * v);
                        acc[r][v] = _mm512_maskz_loadu_ps(mask(v), at);
                    }
                }
            }
            for p in 0..k {
                let mut bv = [_mm512_setzero_ps(); V];
                for v in 0..V {
                    bv[v] = _mm512_maskz_loadu_ps(mask(v), b.as_ptr().add(p * n + j + 16 * v));
                }
                for r in 0..R {
                    let av: __m512 = _mm512_set1_ps(*a.get_unchecked((i + r) * k + p));
                    for v in 0..V {
                        acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
                    }
                }
            }
            for r in 0..R {
                for v in 0..V {
                    let at = c.as_mut_ptr().add((i + r) * n + j + 16 * v);
                    _mm512_mask_storeu_ps(at, mask(v), acc[r][v]);
                }
            }
        }
    }
}

/// AVX2: tiles of 6 rows × 16 columns (12 of the 16 vector registers accumulate).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn gemm_avx2(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32], acc: bool) {
    body::<Fused, 6, 16, 8, 8>(m, k, n, a, b, c, acc);
}

/// The product by tiles of `MR` rows × `W1` columns; the columns left over by tiles `W2` then
/// `W3` wide and then one at a time, the rows left over by tiles of 4 rows, then of 1.
#[inline(always)]
fn body<F: Madd, const MR: usize, const W1: usize, const W2: usize, const W3: usize>(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    accumulate: bool,
) {
    let mut i = 0;
    while i + MR <= m {
        row_block::<F, MR, W1, W2, W3>(i, k, n, a, b, c, accumulate);
        i += MR;
    }
    while i + 4 <= m {
        row_block::<F, 4, W1, W2, W3>(i, k, n, a, b, c, accumulate);
        i += 4;
    }
    while i < m {
        row_block::<F, 1, W1, W2, W3>(i, k, n, a, b, c, accumulate);
        i += 1;
    }
}

/// Rows `i..i + R` of `C`, every column.
#[inline(always)]
fn row_block<F: Madd, const R: usize, const W1: usize, const W2: usize, const W3: usize>(
    i: usize,
    k: usize,
    n: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    accumulate: bool,
) {
    let mut j = 0;
    while j + W1 <= n {
        tile::<F, R, W1>(i, j, k, n, a, b, c, accumulate);
        j += W1;
    }
    while j + W2 <= n {
        tile::<F, R, W2>(i, j, k, n, a, b, c, accumulate);
        j += W2;
    }
    while j + W3 <= n {
        tile::<F, R, W3>(i, j, k, n, a, b, c, accumulate);
        j += W3;
    }
    if j < n {
        edge::<F, R>(i, j, k, n, a, b, c, accumulate);
    }
}

/// One `R × NR` tile of `C` at `(i, j)`, held in registers over the whole inner dimension.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile<F: Madd, const R: usize, const NR: usize>(
    i: usize,
    j: usize,
    k: usize,
    n: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    accumulate: bool,
) {
    let mut acc = [[0.0f32; NR]; R];
    if accumulate {
        for (r, row) in acc.iter_mut().enumerate() {
            row.copy_from_slice(&c[(i + r) * n + j..][..NR]);
        }
    }
    for p in 0..k {
        let brow: &[f32; NR] = b[p * n + j..][..NR].try_into().expect("NR values");
        for (r, row) in acc.iter_mut().enumerate() {
            let av = a[(i + r) * k + p];
            for (x, bv) in row.iter_mut().zip(brow) {
                *x = F::madd(*x, av, *bv);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        c[(i + r) * n + j..][..NR].copy_from_slice(row);
    }
}

/// The last `n − j` (< NR) columns of `R` rows from `i`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn edge<F: Madd, const R: usize>(
    i: usize,
    j: usize,
    k: usize,
    n: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    accumulate: bool,
) {
    for r in 0..R {
        let row = &mut c[(i + r) * n + j..(i + r + 1) * n];
        if !accumulate {
            row.fill(0.0);
        }
        for p in 0..k {
            let av = a[(i + r) * k + p];
            for (x, bv) in row.iter_mut().zip(&b[p * n + j..(p + 1) * n]) {
                *x = F::madd(*x, av, *bv);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c0: &[f32]) -> Vec<f64> {
        (0..m * n)
            .map(|ij| {
                let (i, j) = (ij / n, ij % n);
                f64::from(c0[ij])
                    + (0..k)
                        .map(|p| f64::from(a[i * k + p]) * f64::from(b[p * n + j]))
                        .sum::<f64>()
            })
            .collect()
    }

    #[test]
    fn every_shape_and_edge_matches_a_double_precision_product() {
        let mut seed = 0x2545_f491_u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        for &(m, k, n) in &[
            (1, 1, 1),
            (3, 5, 7),
            (4, 20, 4096),
            (20, 20, 4096),
            (64, 20, 4096),
            (5, 64, 33),
            (48, 64, 480),
            (1280, 24, 64),
            (7, 3, 100),
            (4, 0, 16),
        ] {
            let a: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rnd()).collect();
            let c0: Vec<f32> = (0..m * n).map(|_| rnd()).collect();
            for accumulate in [false, true] {
                let mut c = c0.clone();
                gemm(m, k, n, &a, &b, &mut c, accumulate);
                let zero = vec![0.0; m * n];
                let want = reference(m, k, n, &a, &b, if accumulate { &c0 } else { &zero });
                let worst = c
                    .iter()
                    .zip(&want)
                    .map(|(x, y)| (f64::from(*x) - y).abs())
                    .fold(0.0, f64::max);
                assert!(
                    worst <= 1e-6 * (k as f64 + 1.0),
                    "{m}×{k} by {k}×{n} (accumulate {accumulate}): off by {worst:e}"
                );
            }
            // the kernels the CPU did not pick (the portable one, AVX2 on an AVX-512 machine)
            let want = reference(m, k, n, &a, &b, &c0);
            let check = |c: &[f32], which: &str| {
                assert!(
                    c.iter()
                        .zip(&want)
                        .all(|(x, y)| (f64::from(*x) - y).abs() <= 1e-6 * (k as f64 + 1.0)),
                    "{which} {m}×{k} by {k}×{n}"
                );
            };
            let mut c = c0.clone();
            body::<Plain, 4, 8, 8, 8>(m, k, n, &a, &b, &mut c, true);
            check(&c, "portable");
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                let mut c = c0.clone();
                // SAFETY: the CPU has AVX2 and FMA (checked just above).
                unsafe { gemm_avx2(m, k, n, &a, &b, &mut c, true) };
                check(&c, "avx2");
            }
        }
    }
}
