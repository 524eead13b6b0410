"""The offline tasks: shapes, splits that never depend on the run's seed, the MQAR layout, byte windows,
the image-folder layouts (on tiny folders made here) and clear errors for impossible options."""

import pickle

import numpy as np
import pytest
import torch

from ttt_bench.errors import ConfigError
from ttt_bench.training import tasks
from ttt_bench.training.tasks import IGNORE_INDEX
from ttt_bench.training.tasks.mqar import generate_mqar, no_recall_accuracy


@pytest.mark.parametrize("seq_len, side", [(196, 14), (784, 28), (3136, 56)])
def test_mnist_resolution_follows_the_sequence_length(seq_len, side):
    data = tasks.load_task("mnist", {}, seq_len)
    assert data.train_inputs.shape == (4000, seq_len, 1) and data.test_inputs.shape == (1000, seq_len, 1)
    assert data.spec.n_outputs == 10 and not data.spec.per_token
    assert set(data.train_targets.tolist()) == set(range(10))
    assert abs(float(data.train_inputs.mean())) < 1e-4 and abs(float(data.train_inputs.std()) - 1) < 1e-3
    assert f"{side}x{side}" in data.description


def test_mnist_split_is_fixed_and_disjoint():
    first, second = tasks.load_task("mnist", {}, 196), tasks.load_task("mnist", {}, 196)
    assert torch.equal(first.test_inputs, second.test_inputs) and torch.equal(first.train_targets, second.train_targets)
    train = {tuple(row.tolist()) for row in first.train_inputs[:, :, 0].round(decimals=4)}
    assert not any(tuple(row.tolist()) in train for row in first.test_inputs[:, :, 0].round(decimals=4))


def test_digits_and_their_options():
    data = tasks.load_task("digits", {"train_examples": 500}, 64)
    assert data.train_inputs.shape == (500, 64, 1) and data.test_inputs.shape == (297, 64, 1)
    with pytest.raises(ConfigError, match="train_examples = 2000 is not allowed; the data set has 1797"):
        tasks.load_task("digits", {"test_examples": 1000, "train_examples": 1000}, 64)


@pytest.mark.parametrize("task", ["mnist", "digits"])
def test_pixel_tasks_need_a_square_number_of_tokens(task):
    with pytest.raises(ConfigError, match="seq_len=200 is not allowed; one token per pixel.*nearest: 196 or 225"):
        tasks.load_task(task, {}, 200)


def test_unknown_task_and_option_name_what_exists():
    with pytest.raises(ConfigError, match="unknown task 'cifar'; tasks: bytes-lm, digits, image-folder, mnist, mqar"):
        tasks.load_task("cifar", {}, 64)
    with pytest.raises(ConfigError, match="task 'mqar' has no option 'pairs'; its options are: n_pairs"):
        tasks.load_task("mqar", {"pairs": 3}, 64)


def test_mqar_sequences_hold_pairs_then_each_key_queried_once():
    generator = torch.Generator().manual_seed(3)
    inputs, targets = generate_mqar(200, seq_len=40, n_pairs=5, vocab_size=32, generator=generator)
    for sequence, target in zip(inputs.tolist(), targets.tolist()):
        keys, values = sequence[0:10:2], sequence[1:10:2]
        assert len(set(keys)) == 5 and all(1 <= k < 16 for k in keys) and all(16 <= v < 32 for v in values)
        pairs = dict(zip(keys, values))
        scored = [i for i, t in enumerate(target) if t != IGNORE_INDEX]
        assert len(scored) == 5 and all(i >= 10 for i in scored)
        assert sorted(sequence[i] for i in scored) == sorted(keys)  # every key asked once
        for i in scored:
            assert target[i] == pairs[sequence[i]] == sequence[i + 1]  # the answer is the key's value, next
        filler = set(range(10, 40)) - set(scored) - {i + 1 for i in scored}
        assert all(sequence[i] == 0 for i in filler)


def test_mqar_is_the_same_on_every_load_and_checks_its_length():
    first, second = tasks.load_task("mqar", {"n_pairs": 4}, 32), tasks.load_task("mqar", {"n_pairs": 4}, 32)
    assert torch.equal(first.train_inputs, second.train_inputs) and torch.equal(first.test_targets, second.test_targets)
    assert not torch.equal(first.train_inputs[:1000], first.test_inputs)
    with pytest.raises(ConfigError, match="seq_len=30 is not allowed with n_pairs=8; .* 32 tokens"):
        tasks.load_task("mqar", {"n_pairs": 8}, 30)
    with pytest.raises(ConfigError, match="vocab_size=10 is not allowed; it must be an integer >= 18"):
        tasks.load_task("mqar", {"n_pairs": 8, "vocab_size": 10}, 64)


def test_mqar_floor_is_the_best_guess_among_the_values_not_yet_asked_for():
    # Two sequences, 3 pairs each; queries come in the order asked. First: distinct values (1/3, 1/2, 1).
    # Second: values 20, 20, 21, asked for 20 first: 2/3 (guess 20), then {20, 21}: 1/2, then {21}: 1.
    P = IGNORE_INDEX
    inputs = torch.tensor([[1, 20, 2, 21, 3, 22, 2, 21, 1, 20, 3, 22],
                           [1, 20, 2, 20, 3, 21, 1, 20, 3, 21, 2, 20]])
    targets = torch.tensor([[P, P, P, P, P, P, 21, P, 20, P, 22, P],
                            [P, P, P, P, P, P, 20, P, 21, P, 20, P]])
    expected = (1 / 3 + 1 / 2 + 1 + 2 / 3 + 1 / 2 + 1) / 6
    assert no_recall_accuracy(inputs, targets, n_pairs=3) == pytest.approx(expected)
    # With distinct values the floor is H_P / P; on generated data repeats raise it a little.
    data = tasks.load_task("mqar", {"n_pairs": 8, "vocab_size": 64, "test_examples": 400}, 64)
    harmonic = sum(1 / k for k in range(1, 9)) / 8
    assert harmonic <= data.floor_accuracy < harmonic + 0.1 and data.chance_accuracy == 1 / 32


@pytest.mark.parametrize("task, seq_len", [("digits", 16), ("mnist", 196)])
def test_pixel_tasks_state_chance_and_a_floor_without_the_image(task, seq_len):
    data = tasks.load_task(task, {}, seq_len)
    majority = float((data.test_targets == data.train_targets.mode().values).double().mean())
    assert data.chance_accuracy == 0.1 and data.floor_accuracy == max(0.1, majority)


def test_bytes_lm_floor_is_the_most_frequent_byte():
    data = tasks.load_task("bytes-lm", {"train_bytes": 50_000, "test_windows": 20}, 64)
    space = float((data.test_targets == ord(" ")).double().mean())  # the most frequent byte of Python source
    assert data.floor_accuracy == pytest.approx(space) and data.chance_accuracy == 1 / 256


def test_bytes_lm_windows_are_next_byte_pairs_of_real_source():
    data = tasks.load_task("bytes-lm", {"train_bytes": 50_000, "test_windows": 20}, 64)
    assert data.train_inputs.shape[1] == 64 and data.test_inputs.shape == (20, 64)
    assert torch.equal(data.train_inputs[:, 1:], data.train_targets[:, :-1])
    assert data.spec.per_token and data.spec.n_outputs == 256
    text = bytes(data.train_inputs[:4].flatten().tolist())
    assert b"import" in bytes(data.train_inputs.flatten().tolist()) and text.isascii()
    again = tasks.load_task("bytes-lm", {"train_bytes": 50_000, "test_windows": 20}, 64)
    assert torch.equal(data.test_inputs, again.test_inputs)


def write_png(path, value, size=(12, 9)):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(path)


def test_image_folder_of_class_folders_is_split_per_class(tmp_path):
    for label, value in (("cat", 30), ("dog", 220)):
        for i in range(5):
            write_png(tmp_path / label / f"{i}.png", value + i)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    data = tasks.load_task("image-folder", {"root": str(tmp_path), "test_fraction": 0.2}, 16)
    assert data.train_inputs.shape == (8, 16, 3) and data.test_inputs.shape == (2, 16, 3)
    assert data.test_targets.tolist() == [0, 1] and data.spec.n_outputs == 2
    assert float(data.test_inputs[1].mean()) > float(data.test_inputs[0].mean())  # dog is the brighter class
    grey = tasks.load_task("image-folder", {"root": str(tmp_path), "grayscale": True}, 16)
    assert grey.spec.features == 1


def test_image_folder_with_train_and_val_folders(tmp_path):
    for split, count in (("train", 3), ("val", 2)):
        for label in ("a", "b", "c"):
            for i in range(count):
                write_png(tmp_path / split / label / f"{i}.jpg", 10 * i, size=(40, 30))
    data = tasks.load_task("image-folder", {"root": str(tmp_path), "max_per_class": 2}, 25)
    assert data.train_inputs.shape == (6, 25, 3) and data.test_inputs.shape == (6, 25, 3)
    assert "train/, val/" in data.description


def test_image_folder_reads_cifar10_python_batches(tmp_path):
    rng = np.random.default_rng(0)
    for name, count in (("data_batch_1", 20), ("data_batch_2", 20), ("test_batch", 10)):
        batch = {b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                 b"labels": [i % 10 for i in range(count)]}
        (tmp_path / name).write_bytes(pickle.dumps(batch))
    (tmp_path / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))
    data = tasks.load_task("image-folder", {"root": str(tmp_path)}, 64)
    assert data.train_inputs.shape == (40, 64, 3) and data.test_inputs.shape == (10, 64, 3)
    assert data.spec.n_outputs == 10 and "CIFAR-10" in data.description


def test_image_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="option 'root' is required"):
        tasks.load_task("image-folder", {}, 16)
    with pytest.raises(ConfigError, match="is not a folder"):
        tasks.load_task("image-folder", {"root": str(tmp_path / "missing")}, 16)
    write_png(tmp_path / "only" / "0.png", 5)
    with pytest.raises(ConfigError, match="holds 1 class folders; classification needs at least 2"):
        tasks.load_task("image-folder", {"root": str(tmp_path)}, 16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="empty has no images"):
        tasks.load_task("image-folder", {"root": str(tmp_path)}, 16)
    (tmp_path / "empty" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match="cannot read image .*broken.png"):
        tasks.load_task("image-folder", {"root": str(tmp_path)}, 16)
