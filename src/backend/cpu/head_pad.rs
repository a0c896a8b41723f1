//! Head-dimension padding, the CPU reference of cuda/head_pad.cu: rows of
//! `hd` values widened to `hd_pad` with zeros (rounded to bf16 on the way,
//! as the attention kernels take bf16), and narrowed back.
//!
//! Why it exists: the flash-attention kernels are built for head dims 64 and
//! 128; the GPU model runs a smaller head dim on zero-padded heads, which is
//! exact (zero columns add nothing to Q·Kᵀ and give zero output and gradient
//! columns). Values are bf16 bit patterns (`u16`) where the kernels' are bf16.

use half::bf16;

/// `[rows, hd]` f32 → `[rows, hd_pad]` bf16 bits, zeros past `hd`.
pub fn pad_heads_bf16(x: &[f32], hd: usize, hd_pad: usize) -> Vec<u16> {
    assert!(hd <= hd_pad && hd > 0 && x.len() % hd == 0, "pad_heads_bf16: {} values in rows of {hd}, padded to {hd_pad}", x.len());
    let mut out = vec![0u16; x.len() / hd * hd_pad];
    for (o, r) in out.chunks_mut(hd_pad).zip(x.chunks(hd)) {
        for (d, &v) in o.iter_mut().zip(r) {
            *d = bf16::from_f32(v).to_bits();
        }
    }
    out
}

/// `[rows, hd_pad]` → its first `hd` columns `[rows, hd]`, any element type.
pub fn unpad_heads<T: Copy>(x: &[T], hd: usize, hd_pad: usize) -> Vec<T> {
    assert!(hd <= hd_pad && hd > 0 && x.len() % hd_pad == 0, "unpad_heads: {} values in rows of {hd_pad}, narrowed to {hd}", x.len());
    x.chunks(hd_pad).flat_map(|r| r[..hd].iter().copied()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_with_zeros_and_unpads_back() {
        let x = [1.0f32, 2.0, 3.0, 4.0];
        let p = pad_heads_bf16(&x, 2, 4);
        let as_f32: Vec<f32> = p.iter().map(|&b| bf16::from_bits(b).to_f32()).collect();
        assert_eq!(as_f32, vec![1.0, 2.0, 0.0, 0.0, 3.0, 4.0, 0.0, 0.0]);
        assert_eq!(unpad_heads(&as_f32, 2, 4), x.to_vec());
        // Equal widths: a plain cast and a plain copy.
        assert_eq!(unpad_heads(&p, 4, 4), p);
    }
}
