"""LLM Surgeon algebra against brute force on a tiny layer: the Kronecker costs and OBS updates equal the exact
constrained quadratic minimum of 1/2 dw^T (G (x) A) dw, and the updates beat plain removal."""

import pytest
import torch

from shear_hub.errors import ShearHubError
from shear_hub.methods.surgeon import obs
from shear_hub.methods.surgeon.config import SurgeonConfig



@pytest.fixture(autouse=True)
def _float64():
    """Exact algebra needs float64; restore the default so later tests in the same process see float32."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _spd(n, seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(3 * n, n, generator=g) + 0.5 * torch.randn(1, n, generator=g)
    return X.T @ X / (3 * n)


def _setup(out=6, inp=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out, inp, generator=g)
    return W, _spd(inp, seed + 1), _spd(out, seed + 2)


def _brute(W, A, G, Q):
    """Exact OBS for removing the flat weight indices Q (row-major vec): min 1/2 dw^T F dw s.t. dw_Q = -w_Q."""
    F = torch.kron(G, A)  # vec(W) row-major: dw^T (G (x) A) dw = tr(G dW A dW^T)
    Fi = torch.linalg.inv(F)
    w = W.flatten()
    Q = torch.tensor(Q)
    K = Fi[Q][:, Q]
    lam = torch.linalg.solve(K, w[Q])
    dw = -Fi[:, Q] @ lam
    return 0.5 * float(w[Q] @ lam), (W.flatten() + dw).reshape(W.shape)


def _flat_rows(W, rows):
    return [r * W.shape[1] + j for r in rows for j in range(W.shape[1])]


def _flat_cols(W, cols):
    return [i * W.shape[1] + c for i in range(W.shape[0]) for c in cols]


def test_single_row_and_column_costs_match_brute_force():
    W, A, G = _setup()
    Gi, Ai = torch.linalg.inv(G), torch.linalg.inv(A)
    rc, cc = obs.row_costs(W, A, Gi), obs.col_costs(W, G, Ai)
    for r in range(W.shape[0]):
        assert rc[r].item() == pytest.approx(_brute(W, A, G, _flat_rows(W, [r]))[0], rel=1e-8)
    for c in range(W.shape[1]):
        assert cc[c].item() == pytest.approx(_brute(W, A, G, _flat_cols(W, [c]))[0], rel=1e-8)
    wc = obs.weight_costs(W, Gi, Ai)
    assert wc[2, 3].item() == pytest.approx(_brute(W, A, G, [2 * W.shape[1] + 3])[0], rel=1e-8)


def test_joint_costs_and_updates_match_brute_force():
    W, A, G = _setup(seed=3)
    Gi, Ai = torch.linalg.inv(G), torch.linalg.inv(A)
    rows, cols = torch.tensor([1, 4]), torch.tensor([0, 2, 3])
    cost, best = _brute(W, A, G, _flat_rows(W, rows.tolist()))
    assert obs.rows_cost(W, A, Gi, rows) == pytest.approx(cost, rel=1e-8)
    torch.testing.assert_close(obs.remove_rows(W, Gi, rows), best)
    cost, best = _brute(W, A, G, _flat_cols(W, cols.tolist()))
    assert obs.cols_cost(W, G, Ai, cols) == pytest.approx(cost, rel=1e-8)
    torch.testing.assert_close(obs.remove_cols(W, Ai, cols), best)
    assert obs.whole_cost(W, A, G) == pytest.approx(0.5 * float(torch.trace(G @ W @ A @ W.T)), rel=1e-10)


def test_weight_update_is_exact_when_rows_decouple():
    """With diagonal G the per-row solve of the reference is the exact joint OBS solution."""
    W, A, _ = _setup(seed=5)
    G = torch.diag(torch.rand(W.shape[0], generator=torch.Generator().manual_seed(9)) + 0.5)
    mask = torch.rand(W.shape, generator=torch.Generator().manual_seed(1)) < 0.4
    Q = torch.nonzero(mask.flatten()).flatten().tolist()
    _, best = _brute(W, A, G, Q)
    out = obs.remove_weights(W, torch.linalg.inv(G), torch.linalg.inv(A), mask, chunk=2)
    torch.testing.assert_close(out, best)
    assert (out[mask] == 0).all()


def _kfac_loss(dW, A, G):
    return 0.5 * float(torch.trace(G @ dW @ A @ dW.T))


def test_obs_updates_beat_plain_removal():
    """Under the K-FAC model and for the layer-output reconstruction error ||dW X^T|| (G = I), the OBS update is
    better than zeroing the same structures."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 8, generator=g) @ torch.randn(8, 8, generator=g)  # correlated inputs
    W = torch.randn(7, 8, generator=g)
    A, G = X.T @ X / 200, _spd(7, 4)
    Ai, Gi = torch.linalg.inv(A), torch.linalg.inv(G)
    cols, rows = torch.tensor([1, 5]), torch.tensor([0, 3])
    plain = W.clone()
    plain[:, cols] = 0
    upd = obs.remove_cols(W, Ai, cols)
    assert (upd[:, cols] == 0).all()
    err_upd, err_plain = ((upd - W) @ X.T).norm(), ((plain - W) @ X.T).norm()
    assert err_upd < 0.9 * err_plain
    plain = W.clone()
    plain[rows] = 0
    upd = obs.remove_rows(W, Gi, rows)
    assert _kfac_loss(upd - W, A, G) < _kfac_loss(plain - W, A, G)
    mask = torch.rand(W.shape, generator=g) < 0.5
    upd = obs.remove_weights(W, Gi, Ai, mask)
    assert _kfac_loss(upd - W, A, G) < _kfac_loss(W.masked_fill(mask, 0) - W, A, G)


def test_two_four_picks_two_cheapest_per_block():
    costs = torch.rand(5, 16, generator=torch.Generator().manual_seed(2))
    mask, block = obs.two_four_blocks(costs)
    assert (mask.reshape(5, 4, 4).sum(-1) == 2).all()
    sorted_blocks = costs.reshape(5, 4, 4).sort(-1).values
    torch.testing.assert_close(block, sorted_blocks[..., :2].sum(-1))


def test_damped_inverse_handles_singular_factor():
    M = torch.zeros(4, 4)
    M[0, 0] = 1.0  # rank one: relative damping makes it invertible
    inv = obs.damped_inverse(M, 0.01)
    torch.testing.assert_close(inv @ (M + 0.01 * 0.25 * torch.eye(4)), torch.eye(4))


def test_sequential_update_is_exact_when_removed_columns_precede_kept_ones():
    """Removing a row's columns one at a time with full OBS updates is the joint removal; the sequential pass only
    skips updates of already processed kept columns, and with a prefix mask there are none."""
    W, A, G = _setup(out=7, inp=6, seed=11)
    Ai, Gi = torch.linalg.inv(A), torch.linalg.inv(G)
    cols = torch.arange(W.shape[1])[None, :]
    for lengths in (torch.full((7, 1), 3), torch.arange(7)[:, None]):  # same prefix / prefixes of length 0..6
        mask = cols < lengths
        for gi in (None, Gi):
            seq = obs.remove_weights_sequential(W, gi, Ai, mask, block=4)[0]
            torch.testing.assert_close(seq, obs.remove_weights(W, gi, Ai, mask), rtol=0, atol=1e-8)
            assert (seq - W.masked_fill(mask, 0)).abs().max() > 1e-2  # a real update, not just zeroing


def test_sequential_update_on_a_random_mask_beats_zeroing_and_ignores_block_size():
    W, A, G = _setup(out=12, inp=20, seed=7)
    Ai, Gi = torch.linalg.inv(A), torch.linalg.inv(G)
    mask = torch.rand(W.shape, generator=torch.Generator().manual_seed(3)) < 0.5
    for GG, gi in ((torch.eye(W.shape[0]), None), (G, Gi)):
        seq = obs.remove_weights_sequential(W, gi, Ai, mask)[0]
        joint = obs.remove_weights(W, gi, Ai, mask)
        assert (seq[mask] == 0).all()
        err, err_joint, err_zero = (_kfac_loss(x - W, A, GG) for x in (seq, joint, W.masked_fill(mask, 0)))
        assert err < err_zero
        assert err <= 1.5 * err_joint
        assert (seq - joint).abs().max() > 1e-3  # a random mask is where the two solvers differ
        for block in (1, 7):
            torch.testing.assert_close(obs.remove_weights_sequential(W, gi, Ai, mask, block=block)[0], seq,
                                       rtol=0, atol=1e-10)


def test_config_refuses_an_unknown_solver():
    assert SurgeonConfig().solver == "sequential"
    with pytest.raises(ShearHubError, match="solver=sequential or joint"):
        SurgeonConfig(solver="cholesky")


@pytest.mark.parametrize("selector", [obs.RateSelector(rate=0.5, width=8), obs.TwoFourSelector()])
def test_adaptive_selection_removes_its_share_and_equals_the_fixed_pass_on_its_mask(selector):
    """The pass that chooses its mask gives the same weights as the fixed-mask pass given that mask; the share is
    per block (per 4 inputs of a row for 2:4), and weights that must go are in it."""
    W, A, G = _setup(out=10, inp=24, seed=5)
    Ai, Gi = torch.linalg.inv(A), torch.linalg.inv(G)
    forced = torch.zeros(W.shape, dtype=torch.bool)
    forced[0, 1] = forced[3, 9] = True
    for gi in (None, Gi):
        new, removed = obs.remove_weights_sequential(W, gi, Ai, forced, block=8, select=selector)
        assert removed[forced].all() and (new[removed] == 0).all()
        if isinstance(selector, obs.TwoFourSelector):
            assert (removed.view(10, 6, 4).sum(-1) == 2).all()
        else:
            assert (removed.view(10, 3, 8).sum((0, 2)) == 40).all()
        fixed, again = obs.remove_weights_sequential(W, gi, Ai, removed, block=8)
        assert torch.equal(again, removed)
        torch.testing.assert_close(new, fixed, rtol=0, atol=1e-12)
        if gi is None:  # SparseGPT's pass; spread over rows through a far-from-diagonal G it has no such guarantee
            eye = torch.eye(10)
            assert _kfac_loss(new - W, A, eye) < _kfac_loss(W.masked_fill(removed, 0) - W, A, eye)


def test_config_refuses_an_unknown_selection():
    assert SurgeonConfig().select == "adaptive"
    with pytest.raises(ShearHubError, match="select=adaptive or costs"):
        SurgeonConfig(select="random")
