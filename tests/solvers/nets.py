"""Small nets and solver texts the solver tests share."""

# A student InnerProduct learns a fixed teacher's weights from random inputs: no data files needed,
# the loss goes to ~0, and the random inputs make the run depend on the generator's state.
TEACHER = """
name: "teacher"
layer { name: "x" type: "DummyData" top: "x"
        dummy_data_param { shape { dim: 8 dim: 5 } data_filler { type: "gaussian" std: 1 } } }
layer { name: "teacher" type: "InnerProduct" bottom: "x" top: "target" param { lr_mult: 0 } param { lr_mult: 0 }
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 1 }
                              bias_filler { type: "gaussian" std: 1 } } }
layer { name: "student" type: "InnerProduct" bottom: "x" top: "y" param { lr_mult: 1 } param { lr_mult: 2 }
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "drop" type: "Dropout" bottom: "y" top: "yd" dropout_param { dropout_ratio: 0.1 }
        include { phase: TRAIN } }
layer { name: "loss" type: "EuclideanLoss" bottom: "yd" bottom: "target" top: "loss" include { phase: TRAIN } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "target" top: "loss" include { phase: TEST } }
"""


def solver_text(net_text=TEACHER, **fields):
    """A solver with the net inline (net_param); ``fields`` override the defaults below."""
    base = dict(base_lr=0.05, lr_policy='"fixed"', momentum=0.9, max_iter=10, display=0, random_seed=1701,
                snapshot_after_train="false", solver_mode="CPU")
    base.update(fields)
    lines = []
    for k, v in base.items():
        for item in (v if isinstance(v, list) else [v]):
            lines.append(f"{k}: {item}")
    return "\n".join(lines) + "\nnet_param {\n" + net_text + "\n}\n"
