//! The Rust reference forward against numpy's rfft2/irfft2 forward of the same model.

mod common;

use ccm_twin::fno::reference;

#[test]
fn reference_forward_matches_numpy_rfft2() {
    let m = common::reference_model();
    m.cfg.validate().unwrap();
    let y = reference::forward(&m.cfg, &m.weights, &m.norm, &m.input).unwrap();
    let err = common::rel_l2(&y, &m.output);
    eprintln!("reference forward vs numpy: relative L2 {err:.2e}");
    assert!(err <= 1e-6, "relative L2 {err:e}");
}

#[test]
fn parameter_count_matches_the_issue_default() {
    // width 20, 12 modes, 4 layers at 64×64: ≈ 0.9 M parameters
    let cfg = ccm_twin::fno::FnoConfig {
        channels: 1,
        t_in: 1,
        n: 64,
        width: 20,
        modes: 12,
        layers: 4,
        hidden: 64,
        conditioning: 0,
    };
    cfg.validate().unwrap();
    let p = cfg.num_params();
    assert!((850_000..1_000_000).contains(&p), "{p}");
}
