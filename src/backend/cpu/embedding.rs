//! Token embedding: a row gather forward, a scatter-add backward.
//!
//! The backward adds rows serially in token order, so repeated ids sum in a
//! fixed order and the result is reproducible bit for bit.

use rayon::prelude::*;

/// `out[n, d] = table[ids[n], :]`. Ids are validated by the caller.
pub fn embedding_fwd(out: &mut [f32], table: &[f32], ids: &[u32], d: usize) {
    out.par_chunks_mut(d).zip(ids.par_iter()).for_each(|(row, &id)| {
        let id = id as usize;
        row.copy_from_slice(&table[id * d..(id + 1) * d]);
    });
}

/// `dtable[ids[n], :] += dout[n, :]`.
pub fn embedding_bwd(dtable: &mut [f32], dout: &[f32], ids: &[u32], d: usize) {
    for (row, &id) in dout.chunks(d).zip(ids) {
        let id = id as usize;
        dtable[id * d..(id + 1) * d].iter_mut().zip(row).for_each(|(g, v)| *g += v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::gradcheck::{check_gradient, project, random_vec};

    #[test]
    fn embedding_backward_matches_finite_differences() {
        let (vocab, d) = (6, 4);
        let ids = [3u32, 1, 3, 5, 0];
        let mut table = random_vec(vocab * d, 1);
        let r = random_vec(ids.len() * d, 2);
        let mut dt = vec![0.0; vocab * d];
        embedding_bwd(&mut dt, &r, &ids, d);
        let rep = check_gradient(&mut table, &dt, 1e-2, 100, |t| {
            let mut o = vec![0.0; ids.len() * d];
            embedding_fwd(&mut o, t, &ids, d);
            project(&o, &r)
        });
        assert!(rep.rel_err() < 1e-4, "{rep:?}");
    }

    #[test]
    fn repeated_ids_accumulate() {
        let table: Vec<f32> = (0..12).map(|v| v as f32).collect(); // 4 rows of 3
        let ids = [2u32, 0, 2];
        let mut out = vec![0.0; 9];
        embedding_fwd(&mut out, &table, &ids, 3);
        assert_eq!(&out[..3], &[6.0, 7.0, 8.0]);
        let mut dt = vec![0.0; 12];
        embedding_bwd(&mut dt, &[1.0; 9], &ids, 3);
        assert_eq!(dt, vec![1., 1., 1., 0., 0., 0., 2., 2., 2., 0., 0., 0.]);
    }
}
