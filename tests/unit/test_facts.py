"""The one-line facts the steps log: what was done or skipped, with the numbers and the rejected files."""

from anomaly_ae import facts


def test_rejected_files_are_named_up_to_a_limit_then_counted():
    rejects = [(f"f{k}.png", "empty file (0 bytes)") for k in range(facts.MAX_NAMED)]
    assert facts.named(rejects[:2]) == "f0.png (empty file (0 bytes)); f1.png (empty file (0 bytes))"
    assert facts.named(rejects, total=12).endswith(f"f{facts.MAX_NAMED - 1}.png (empty file (0 bytes)) and 7 more")


def test_lines_say_done_or_skipped_with_their_numbers():
    ds = {"dataset": "d", "cached": False, "image_shape": [28, 28, 1], "classes": ["a", "b"],
          "counts": {"images": 9, "masks": 0, "rejects": 1}}
    assert facts.ingest(ds, [("x.png", "corrupt")]) == \
        "ingested 9 images 28x28x1 of 2 classes into d, 0 masks, 1 rejected: x.png (corrupt)"
    assert facts.ingest({**ds, "cached": True}, []).startswith("skipped ingest: d is up to date")
    model = {"model": "m", "cached": False, "kind": "ae", "n_train": 80, "epochs": 9, "stopped": "early",
             "best_epoch": 3, "train_loss": 0.5, "held_out_loss": 0.25, "seconds": 12.0, "device": "cpu",
             "threshold": 0.04, "target_fpr": 0.01, "guaranteed_fpr": 0.0099, "n_calibration": 100, "selection": None}
    line = facts.train(model)
    assert line.startswith("trained ae on 80 images: 9 epochs (stopped early), best epoch 3")
    assert "100 calibration" in line
    run = {"run": "r", "scored": 9, "flagged": 4, "rejects": 1, "auroc": 0.875, "drift": False}
    assert facts.run_message(run) == "4/9 flagged, 1 unreadable, drift: none"
    assert facts.score(run, [("y.png", "truncated")]).endswith("AUROC 0.875; unreadable: y.png (truncated)")
    assert facts.calibrate({**model, "cached": True}).startswith("skipped calibration: m already holds")


def test_an_ensemble_says_each_members_epochs():
    selection = {"chosen": "ensemble", "members": ["ae", "draem", "geometric"], "candidates": []}
    model = {"model": "m", "cached": False, "kind": "ensemble", "n_train": 280, "epochs": 26, "stopped": "early",
             "best_epoch": 20, "train_loss": 0.5, "held_out_loss": 0.25, "seconds": 105.0, "device": "cpu",
             "threshold": 2.4, "target_fpr": 0.01, "guaranteed_fpr": 0.014, "n_calibration": 70,
             "selection": selection, "member_epochs": {"ae": 26, "draem": 30, "geometric": 18}}
    line = facts.train(model)
    assert line.startswith("trained ensemble (auto chose it: ae + draem + geometric together) on 280 images: "
                           "epochs ae 26, draem 30, geometric 18, 105 s on cpu; threshold")
    assert "best epoch" not in line and facts.epochs({**model, "member_epochs": None}) == "26 epochs"


def test_the_nearest_kind_says_how_many_images_it_keeps_not_epochs():
    model = {"model": "m", "cached": False, "kind": "nearest", "n_train": 905, "epochs": 0, "kept": 186,
             "stopped": None, "best_epoch": 1, "train_loss": 0.0, "held_out_loss": 0.01, "seconds": 0.4,
             "device": "cpu", "threshold": 0.13, "target_fpr": 0.01, "guaranteed_fpr": 0.01, "n_calibration": 226}
    assert facts.train(model).startswith("trained nearest on 905 images: no epochs, it keeps 186 of them, 0 s on cpu; ")
    shrunk = {**model, "kept": 905, "compared_at": [100, 120]}  # all of them, compared smaller
    assert facts.epochs(shrunk) == "no epochs, it keeps 905 of them, compared at 120x100"
