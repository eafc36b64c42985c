"""Named parameters: ``{name: array}`` in place of a list, and Keras's name-based rules
(``exclude_from_weight_decay(var_names=...)``, Muon's ``exclude_embeddings``/``exclude_layers``),
names in saved states, and ``optimizer.variables``. Reference values by hand."""

from __future__ import annotations

import numpy as np
import pytest

from optlab.optimizers import SGD, Adam, AdamW, Muon


def _params():
    return {"dense/kernel": np.full((2, 2), 2.0), "dense/bias": np.full(2, 2.0), "norm/gamma": np.full(3, 2.0)}


def _zeros(params):
    return {k: np.zeros_like(v) for k, v in params.items()}


def test_var_names_exclude_by_regular_expression_search_as_keras_does():
    # Keras's adam_test.test_weight_decay, by name: zero gradients leave only the decay,
    # p <- p - lr * wd * p = 2 - 1.0 * 0.004 * 2 = 1.992 where it applies
    params = _params()
    opt = AdamW(learning_rate=1.0, weight_decay=0.004)
    opt.exclude_from_weight_decay(var_names=["bias", "^norm/"])
    opt.apply(_zeros(params), params)
    np.testing.assert_allclose(params["dense/kernel"], 1.992, rtol=1e-12)
    np.testing.assert_array_equal(params["dense/bias"], 2.0)
    np.testing.assert_array_equal(params["norm/gamma"], 2.0)


def test_names_given_once_hold_for_later_positional_and_reordered_calls():
    params = _params()
    opt = AdamW(learning_rate=1.0, weight_decay=0.004)
    opt.exclude_from_weight_decay(var_names=["bias"])
    opt.build(params)
    opt.apply_gradients(zip(_zeros(params).values(), params.values()))  # positional, in the built order
    reordered = {k: params[k] for k in reversed(list(params))}
    opt.apply(_zeros(reordered), reordered)  # matched by name, not by position
    np.testing.assert_allclose(params["dense/kernel"], 2 * 0.996**2, rtol=1e-12)
    np.testing.assert_allclose(params["norm/gamma"], 2 * 0.996**2, rtol=1e-12)
    np.testing.assert_array_equal(params["dense/bias"], 2.0)


def test_names_that_do_not_match_are_refused_and_nothing_changes():
    params = _params()
    opt = Adam(learning_rate=0.1)
    opt.apply(_zeros(params), params)
    before = {k: v.copy() for k, v in params.items()}
    other = dict(params)
    other["dense/weights"] = other.pop("dense/kernel")
    with pytest.raises(ValueError, match=r"missing \['dense/kernel'\]; unknown \['dense/weights'\]"):
        opt.apply(_zeros(other), other)
    assert opt.iterations == 1 and all(np.array_equal(params[k], before[k]) for k in params)


def test_var_names_need_named_parameters_and_valid_patterns():
    opt = SGD(learning_rate=0.1, weight_decay=0.1)
    opt.exclude_from_weight_decay(var_names=["bias"])
    p = np.ones(2)
    with pytest.raises(ValueError, match=r"selects parameters by name, and these are unnamed.*dict \{name: array\}"):
        opt.apply([np.ones(2)], [p])
    np.testing.assert_array_equal(p, 1.0)
    with pytest.raises(ValueError, match=r"'\(bias', which is not a regular expression"):
        SGD(0.1).exclude_from_weight_decay(var_names=["(bias"])
    with pytest.raises(TypeError, match="parameter names must be non-empty strings"):
        SGD(0.1).build({"": np.ones(2)})


def test_muon_routes_by_name_as_keras_should_use_adamw():
    # Keras's muon_test.test_should_use_adamw, with optlab's names for Keras's variable paths
    assert Muon(exclude_layers=["var"]).uses_adam((2, 2), "variable")
    assert Muon().uses_adam((2, 2), "embedding/embeddings")
    assert Muon().uses_adam((2, 2), "Token_Embedding/table")  # case-insensitive, as Keras's .lower()
    assert not Muon(exclude_embeddings=False).uses_adam((2, 2), "embedding/embeddings")
    assert not Muon().uses_adam((2, 2), "variable")
    assert not Muon().uses_adam((2, 2), "dense/kernel")
    assert Muon().uses_adam((2,), "dense/bias") and Muon().uses_adam((2, 2, 2), "conv/kernel")
    assert not Muon().uses_adam((2, 2), None)  # unnamed: by rank alone


def test_a_parameter_named_like_an_embedding_takes_the_adamw_step():
    # first AdamW step from zero moments: m_hat / sqrt(v_hat) = g / |g| = 1, so each element
    # moves by lr * adam_lr_ratio = 0.1 (up to epsilon); Muon's orthogonalized step does not
    params = {"token_embedding": np.ones((2, 2)), "dense/kernel": np.ones((2, 2))}
    grads = {k: np.array([[0.5, 0.1], [0.2, 0.3]]) for k in params}
    opt = Muon(learning_rate=0.1, weight_decay=0.0, adam_weight_decay=0.0)
    opt.apply(grads, params)
    np.testing.assert_allclose(params["token_embedding"], 0.9, rtol=1e-5)
    assert not np.allclose(params["dense/kernel"], 0.9, rtol=1e-3)


def test_muon_decays_each_parameter_by_its_route():
    # Keras's muon_test weight decay tests: p - lr * wd * p, with wd by route
    params = {"dense/kernel": np.full((2, 2), 1.0), "embedding": np.full((2, 2), 1.0), "bias": np.full(2, 1.0)}
    opt = Muon(learning_rate=1.0, weight_decay=0.01, adam_weight_decay=0.5)
    rates = [opt.weight_decay_rate(v.shape, k) for k, v in params.items()]
    assert rates == [0.01, 0.5, 0.5]


def test_muon_exclude_layers_needs_names():
    opt = Muon(exclude_layers=["output"])
    with pytest.raises(ValueError, match=r"exclude_layers=\['output'\] selects parameters by name"):
        opt.apply([np.ones((2, 2))], [np.ones((2, 2))])
    with pytest.raises(ValueError, match="not a regular expression"):
        Muon(exclude_layers=["[output"])


def test_a_saved_state_keeps_its_names_and_refuses_other_names():
    params = _params()
    opt = Adam(learning_rate=0.1)
    opt.apply({k: np.ones_like(v) for k, v in params.items()}, params)
    meta, arrays = opt.get_state()
    assert meta["names"] == ["dense/kernel", "dense/bias", "norm/gamma"]
    other = Adam(learning_rate=0.1)
    renamed = {"a": np.zeros((2, 2)), "b": np.zeros(2), "c": np.zeros(3)}
    other.build(renamed)
    with pytest.raises(
        ValueError, match="is for parameter 0 named 'dense/kernel'; this optimizer's parameter 0 is named 'a'"
    ):
        other.set_state(meta, arrays)
    unnamed = Adam(learning_rate=0.1)
    unnamed.build(list(params.values()))
    unnamed.set_state(meta, arrays)  # the same parameters, unnamed: the state's names are taken
    assert unnamed.get_state()[0]["names"] == meta["names"]


def test_an_unnamed_state_whose_layout_names_would_change_is_refused():
    # Muon lays out Adam's second moment only for AdamW-routed parameters: a state saved for an
    # unnamed 2-D parameter has none for it, which a parameter named like an embedding needs
    saved = Muon(learning_rate=0.1)
    saved.apply([np.ones((2, 2))], [np.ones((2, 2))])
    meta, arrays = saved.get_state()
    named = Muon(learning_rate=0.1)
    named.build({"embedding": np.ones((2, 2))})
    with pytest.raises(ValueError, match="laid out for unnamed parameters and these names change its size"):
        named.set_state(meta, arrays)


def test_variables_are_the_state_by_name_read_only():
    # SGD with momentum: m <- 0.9 m - lr g, from 0: after one step m = -0.1 * g
    params = {"w": np.ones((2, 2)), "b": np.ones(2)}
    grads = {"w": np.full((2, 2), 0.5), "b": np.full(2, 2.0)}
    opt = SGD(learning_rate=0.1, momentum=0.9, use_ema=True)
    assert opt.variables == {"iterations": 0, "learning_rate": 0.1}
    opt.apply(grads, params)
    found = opt.variables
    assert list(found) == ["iterations", "learning_rate", "w/momentum", "b/momentum", "w/ema", "b/ema"]
    assert found["iterations"] == 1
    np.testing.assert_allclose(found["w/momentum"], np.full((2, 2), -0.05))
    np.testing.assert_allclose(found["b/momentum"], np.full(2, -0.2))
    with pytest.raises(ValueError, match="read-only"):
        found["w/momentum"][0, 0] = 1.0
    unnamed = Adam(learning_rate=0.1)
    unnamed.apply([np.ones(3)], [np.ones(3)])
    assert [k for k in unnamed.variables if "/" in k] == ["0/momentum", "0/velocity"]


def test_the_trainer_hands_the_optimizer_the_problems_names():
    # seed_linear names its parameters a and b: a rule by name excludes b from weight decay, so b
    # follows exactly the run without decay, and a does not
    from optlab.trainer import Trainer

    def run(weight_decay, exclude=None):
        opt = SGD(learning_rate=0.05, weight_decay=weight_decay)
        if exclude:
            opt.exclude_from_weight_decay(var_names=exclude)
        trainer = Trainer("seed_linear", opt, epochs=1)
        trainer.fit()
        return trainer.params.flat.copy(), opt

    plain, _ = run(None)
    decayed, opt = run(0.5, exclude=["^b$"])
    assert decayed[1] == plain[1] and decayed[0] != plain[0]
    assert [k for k in opt.variables if "/" in k] == []  # plain SGD has no slots
    adam = Adam(learning_rate=0.01)
    Trainer("mlp_digits", adam, epochs=1, batch_size=512).fit()
    assert "dense/kernel/momentum" in adam.variables and "dense_1/bias/velocity" in adam.variables
