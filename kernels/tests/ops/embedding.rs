use koala_kernels::{Backend, Error};

use crate::common::*;

pub fn literal<B: Backend>(be: &B) {
    let table = up(be, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]); // vocab 3, c 2
    let ids = be.upload_ids(&[2, 0, 2]).unwrap();
    let mut out = be.zeros(6).unwrap();
    be.embedding_fwd(&mut out, &ids, &table, 3, 2).unwrap();
    assert_eq!(down(be, &out), vec![5.0, 6.0, 1.0, 2.0, 5.0, 6.0]);

    // Accumulates into dtable; id 2 gets rows 0 and 2, id 1 nothing.
    let mut dtable = up(be, &[1.0; 6]);
    let dout = up(be, &[0.5, 1.0, 2.0, 3.0, 10.0, 20.0]);
    be.embedding_bwd(&mut dtable, &dout, &ids, 3, 2).unwrap();
    assert_eq!(down(be, &dtable), vec![3.0, 4.0, 1.0, 1.0, 11.5, 22.0]);
}

/// Embedding is linear in the table, so its gradient check is exact up to rounding.
pub fn grad<B: Backend>(be: &B) {
    let (n, c, vocab) = (7, 5, 4);
    let mut r = rng(1);
    let table = uniform(&mut r, vocab * c, 1.0);
    let ids_h = ids(&mut r, n, vocab as u32);
    let proj = uniform(&mut r, n * c, 1.0);
    let ids = be.upload_ids(&ids_h).unwrap();
    let mut dtable = be.zeros(vocab * c).unwrap();
    be.embedding_bwd(&mut dtable, &up(be, &proj), &ids, n, c)
        .unwrap();
    let dtable = down(be, &dtable);
    check_grad("embedding dtable", &dtable, &table, 1e-2, 1e-4, 1, |t| {
        let mut out = be.zeros(n * c).unwrap();
        be.embedding_fwd(&mut out, &ids, &up(be, t), n, c).unwrap();
        project(&down(be, &out), &proj)
    });
}

pub fn errors<B: Backend>(be: &B) {
    let table = up(be, &[0.0; 6]);
    let mut out = be.zeros(4).unwrap();
    let bad = be.upload_ids(&[0, 3]).unwrap();
    let e = be.embedding_fwd(&mut out, &bad, &table, 2, 2).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Index {
                index: 3,
                limit: 3,
                ..
            }
        ),
        "{e}"
    );
    let mut dtable = be.zeros(6).unwrap();
    let e = be.embedding_bwd(&mut dtable, &out, &bad, 2, 2).unwrap_err();
    assert!(matches!(e, Error::Index { .. }), "{e}");
    let ok = be.upload_ids(&[0, 1]).unwrap();
    let e = be.embedding_fwd(&mut out, &ok, &table, 2, 4).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let e = be
        .embedding_fwd(&mut out, &ok, &up(be, &[0.0; 5]), 2, 2)
        .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
}

crate::cpu_tests!(literal, grad, errors);
