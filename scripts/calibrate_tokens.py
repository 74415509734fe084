"""Build the token-count calibration corpus for ``proxy.translate.tokens``.

The proxy estimates ``usage`` with a dependency-free heuristic
(``proxy/translate/tokens.py``).  This script measures the *real* legacy Claude
tokenizer on a deterministic, varied corpus and writes the reference counts to
``tests/data/token_counts.json``, which the unit tests compare the estimator
against.

Requirements (NOT project dependencies -- use a throw-away virtualenv):

* the HF ``tokenizers`` package::

      python3 -m venv /tmp/tokvenv && /tmp/tokvenv/bin/pip install tokenizers

* ``tokenizer.json`` from the MIT-licensed ``anthropic`` wheel, versions
  0.3.0-0.38.0 (sha256 c241737d...911767, 1,774,213 bytes)::

      pip download --no-deps anthropic==0.38.0 -d /tmp/x
      cd /tmp/x && unzip anthropic-0.38.0-py3-none-any.whl anthropic/tokenizer.json

Run (from the repository root)::

      /tmp/tokvenv/bin/python scripts/calibrate_tokens.py /tmp/x/anthropic/tokenizer.json \\
          [--out tests/data/token_counts.json] [--report]

``tokenizer`` (positional) is the path to ``tokenizer.json``; the script checks
its sha256 and refuses a different file unless ``--allow-other-tokenizer`` is
given.  ``--out`` overrides the output path.  ``--report`` also imports
``proxy.translate.tokens`` (the script puts the repository root on
``sys.path`` itself) and prints the estimator's accuracy on the corpus -- the
figures that ``tests/unit/test_tokens.py`` asserts bounds on.

The corpus is generated deterministically: hand-written samples below plus a
seeded random composition of them (no downloads, no external data); re-running
the script with the same tokenizer reproduces the JSON byte for byte.  The
estimator's weights are not fitted here: see the docstring of
``proxy/translate/tokens.py`` for how they were obtained.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path
from typing import Any

EXPECTED_SHA256 = "c241737df24b4e7f7c9af4fdcee29a0ca903dcb288a8b753bc346a3092911767"
SEED = 20240229
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "tests" / "data" / "token_counts.json"

# --------------------------------------------------------------------------- #
# Hand-written material
# --------------------------------------------------------------------------- #

PROSE = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world!",
    "Can you help me write a cover letter for a junior data analyst position?",
    "What is the capital of Australia? I always thought it was Sydney.",
    "Thanks, that was really helpful.",
    "Please summarize the following article in three bullet points.",
    (
        "The history of the printing press is, in many ways, the history of modern Europe. "
        "Before Gutenberg's invention around 1440, books were copied by hand, usually by monks "
        "working in scriptoria, and a single volume could take months to produce. Movable type "
        "changed the economics of knowledge almost overnight: within fifty years, presses were "
        "operating in more than two hundred cities, and millions of books had been printed."
    ),
    (
        "Photosynthesis is the process by which green plants, algae and some bacteria convert "
        "light energy into chemical energy. During this process, carbon dioxide and water are "
        "combined to form glucose, and oxygen is released as a by-product. The reactions take "
        "place mainly in the chloroplasts, which contain the pigment chlorophyll."
    ),
    (
        "I've been thinking about switching careers for a while now. I'm currently working as an "
        "accountant, but I don't find it fulfilling anymore. I'd like to move into software "
        "engineering, but I'm worried that at 34 it's too late to start over. What would you "
        "recommend? Should I do a bootcamp, go back to university, or try to teach myself?"
    ),
    (
        "Our quarterly revenue exceeded expectations, driven primarily by strong demand in the "
        "enterprise segment. Operating margins improved by 120 basis points year over year, "
        "although supply-chain constraints continued to weigh on hardware shipments. Looking "
        "ahead, management reiterated its full-year guidance and announced a new buyback program."
    ),
    (
        "Once upon a time, in a village nestled between two mountains, there lived an old "
        "clockmaker named Elias. Every morning he opened his shop at exactly seven o'clock, "
        "wound each of the hundred clocks that hung on its walls, and listened to them tick in "
        "perfect unison. One day, however, a single clock stopped, and nobody could explain why."
    ),
    (
        "Mitochondrial dysfunction has been implicated in a wide range of neurodegenerative "
        "disorders, including Parkinson's disease, amyotrophic lateral sclerosis and Huntington's "
        "disease. Electrophysiological and immunohistochemical analyses suggest that "
        "oxidative phosphorylation deficits precede the characteristic neuronal degeneration."
    ),
    (
        'To reset your password, click the "Forgot password?" link on the sign-in page, enter the '
        "email address associated with your account, and follow the instructions in the message "
        "we send you. If you don't receive it within a few minutes, check your spam folder."
    ),
    (
        "The committee's recommendations -- which were published last Tuesday -- call for "
        "stricter emissions standards, a phased retirement of coal-fired power plants, and "
        "significant investment in grid-scale storage; critics, however, argue that the "
        "timeline is unrealistic (and, in some regions, economically devastating)."
    ),
    (
        "Internationalization, decentralization, and counterrevolutionary are long words; "
        "so are antidisestablishmentarianism, pseudopseudohypoparathyroidism and "
        "floccinaucinihilipilification. Tokenizers usually split them into several pieces."
    ),
    (
        "ALL CAPS TEXT IS OFTEN TOKENIZED LESS EFFICIENTLY THAN LOWERCASE TEXT. WARNING: DO NOT "
        "OPERATE HEAVY MACHINERY WHILE TAKING THIS MEDICATION."
    ),
    (
        "Kubernetes, PostgreSQL, TensorFlow, GraphQL, OAuth2, WebAssembly and gRPC are all "
        "technologies that a modern backend engineer is likely to encounter; JavaScript's "
        "async/await syntax and Rust's borrow checker are frequent topics of discussion too."
    ),
    (
        "The patient, a 67-year-old male, presented with a three-day history of fever, productive "
        "cough and shortness of breath. On examination, his temperature was 38.9 degrees, heart "
        "rate 104 bpm, and oxygen saturation 91% on room air."
    ),
    (
        "Dear Ms. Thompson,\n\nThank you for your letter of 12 March. I am pleased to confirm that "
        "your application has been approved. Please find enclosed the signed agreement.\n\n"
        "Kind regards,\nJonathan Whitfield\nHead of Operations"
    ),
    "yes",
    "no thanks",
    "ok",
    "Why?",
    "Tell me a joke about programmers.",
    "Translate 'good morning' into Japanese, Korean and Hindi.",
]

QUESTIONS = [
    "What's the difference between a list and a tuple in Python?",
    "How do I center a div in CSS?",
    "Explain quantum entanglement like I'm five.",
    "Write a haiku about autumn leaves.",
    "Give me three ideas for a birthday party for a 10-year-old.",
    "Can you fix the bug in this function?",
    "Summarize the plot of Hamlet in two sentences.",
    "Is it safe to eat raw cookie dough?",
    "Convert 72 degrees Fahrenheit to Celsius.",
    "What are the main causes of inflation?",
    "Draft a polite email declining a meeting invitation.",
    "How many r's are in the word strawberry?",
]

ANSWERS = [
    "Sure! Here is a short answer.",
    "A list is mutable, meaning you can change its contents after creation, while a tuple is "
    "immutable. Tuples are also hashable (if their elements are), so they can be used as "
    "dictionary keys.",
    "The easiest modern approach is flexbox: set `display: flex; justify-content: center; "
    "align-items: center;` on the parent element.",
    "Imagine you have two magic coins. Whenever you flip one and it lands on heads, the other "
    "one always lands on tails, no matter how far apart they are.",
    "Crimson leaves drifting\nwhispers of the cooling wind\nthe year exhales slow",
    "I'm not able to browse the internet, but I can tell you what I know up to my training data.",
    "72 degrees Fahrenheit is about 22.2 degrees Celsius: (72 - 32) x 5/9 = 22.22.",
    'There are three r\'s in the word "strawberry".',
]

PYTHON_CODE = [
    '''def fibonacci(n: int) -> list[int]:
    """Return the first n Fibonacci numbers."""
    result = [0, 1]
    while len(result) < n:
        result.append(result[-1] + result[-2])
    return result[:n]


if __name__ == "__main__":
    print(fibonacci(10))
''',
    """import asyncio
import json
from dataclasses import dataclass, field


@dataclass
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    retries: int = 3
    tags: list[str] = field(default_factory=list)


async def fetch(session, url: str, *, timeout: float = 10.0) -> dict:
    async with session.get(url, timeout=timeout) as resp:
        resp.raise_for_status()
        return json.loads(await resp.text())
""",
    """class LRUCache:
    def __init__(self, capacity):
        self.capacity = capacity
        self._data = {}

    def get(self, key):
        if key not in self._data:
            return -1
        value = self._data.pop(key)
        self._data[key] = value
        return value

    def put(self, key, value):
        self._data.pop(key, None)
        if len(self._data) >= self.capacity:
            del self._data[next(iter(self._data))]
        self._data[key] = value
""",
    """for i in range(10):\n\tif i % 2 == 0:\n\t\tprint(f"{i} is even")\n\telse:\n\t\tprint(f"{i} is odd")\n""",
]

OTHER_CODE = [
    """function debounce(fn, wait = 300) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn.apply(this, args), wait);
  };
}

const el = document.querySelector('#search');
el.addEventListener('input', debounce((e) => console.log(e.target.value)));
""",
    """SELECT u.id, u.email, COUNT(o.id) AS order_count, SUM(o.total_cents) / 100.0 AS revenue
FROM users u
LEFT JOIN orders o ON o.user_id = u.id AND o.created_at >= '2023-01-01'
WHERE u.deleted_at IS NULL
GROUP BY u.id, u.email
HAVING COUNT(o.id) > 5
ORDER BY revenue DESC
LIMIT 20;
""",
    """#!/usr/bin/env bash
set -euo pipefail
for f in ./logs/*.log; do
  gzip -9 "$f" && mv "$f.gz" /var/archive/
done
echo "done: $(date +%Y-%m-%dT%H:%M:%S)" >> /tmp/rotate.log
""",
    """#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 10;
    for (int i = 0; i < n; ++i) {
        printf("%d\\n", i * i);
    }
    return EXIT_SUCCESS;
}
""",
    """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Demo</title></head>
<body>
  <div class="container"><p id="greeting">Hello, <b>world</b>!</p></div>
</body>
</html>
""",
]

JSON_SAMPLES = [
    '{"model": "claude-2.1", "max_tokens_to_sample": 256, "temperature": 0.7, "stream": true}',
    """{
  "id": "chatcmpl-8f3a2b",
  "object": "chat.completion",
  "created": 1700000000,
  "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "Hi there!"}, "finish_reason": "stop"}
  ],
  "usage": {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}
}""",
    '[{"name": "Alice", "age": 30, "email": "alice@example.com"}, '
    '{"name": "Bob", "age": null, "tags": ["admin", "ops"]}]',
    """server:
  host: 0.0.0.0
  port: 8443
  tls:
    cert_file: /etc/ssl/certs/proxy.pem
    key_file: /etc/ssl/private/proxy.key
logging:
  level: INFO
""",
]

MARKDOWN = [
    """# Installation

1. Clone the repository.
2. Run `make install`.
3. Copy `.env.example` to `.env` and fill in your **API key**.

## Usage

- Start the server with `make run`.
- Visit <http://localhost:8000/docs> for the *interactive* documentation.

> **Note:** the free tier is limited to 100 requests per day.
""",
    """| Plan     | Price   | Requests/day | Support   |
|----------|--------:|-------------:|-----------|
| Free     | $0      | 100          | Community |
| Pro      | $29/mo  | 10,000       | Email     |
| Business | $299/mo | 1,000,000    | 24/7      |
""",
    """### Pros and cons

**Pros**
* Fast startup
* Small memory footprint

**Cons**
* Limited ecosystem
* ~~Steep~~ moderate learning curve

---
See [the docs](https://example.org/docs#faq) for details.
""",
]

URL_HOSTS = [
    "www.example.com",
    "api.github.com",
    "docs.python.org",
    "en.wikipedia.org",
    "localhost:8080",
    "cdn.jsdelivr.net",
    "news.ycombinator.com",
    "s3.eu-west-1.amazonaws.com",
]
URL_PATHS = [
    "v1/complete",
    "repos/psf/requests/issues",
    "3/library/re.html",
    "wiki/Tokenization",
    "search",
    "npm/bootstrap@5.3.2/dist/css/bootstrap.min.css",
    "item",
    "my-bucket/2024/01/report.pdf",
]
URL_QUERIES = [
    "",
    "?q=hello+world&page=2",
    "?id=38291734",
    "#section-4",
    "?utm_source=newsletter&utm_medium=email",
    "?token=eyJhbGciOiJIUzI1NiJ9.abc123",
]

GERMAN = [
    "Guten Tag! Können Sie mir bitte helfen? Ich suche eine günstige Wohnung in der Nähe des Hauptbahnhofs.",
    (
        "Die Bundesregierung hat am Mittwoch ein umfangreiches Maßnahmenpaket zur Förderung "
        "erneuerbarer Energien beschlossen. Demnach sollen bis 2030 mindestens achtzig Prozent des "
        "Stromverbrauchs aus Wind- und Sonnenenergie gedeckt werden. Kritiker bemängeln jedoch, "
        "dass der Netzausbau weiterhin deutlich hinter dem Zeitplan zurückliegt."
    ),
    (
        "Die Krankenversicherung übernimmt die Kosten für die Behandlung nur dann, wenn eine ärztliche "
        "Überweisung vorliegt. Bitte reichen Sie die Unterlagen spätestens zwei Wochen vor dem Termin ein."
    ),
]

FRENCH = [
    "Bonjour ! Pourriez-vous m'expliquer comment fonctionne l'impôt sur le revenu en France ?",
    (
        "Le musée du Louvre, situé au cœur de Paris, est l'un des plus grands et des plus visités "
        "au monde. Ancienne résidence royale, il abrite aujourd'hui des œuvres célèbres telles que "
        "la Joconde, la Vénus de Milo et la Victoire de Samothrace. Chaque année, près de neuf "
        "millions de visiteurs franchissent sa pyramide de verre."
    ),
    "Ça m'étonnerait qu'il arrive à l'heure : il est toujours en retard, même pour les réunions importantes.",
]

SPANISH = [
    "¿Dónde está la estación de tren más cercana? Necesito llegar a Barcelona antes de las ocho.",
    (
        "La inteligencia artificial está transformando rápidamente numerosos sectores, desde la "
        "medicina hasta la educación. Sin embargo, los expertos advierten que es fundamental "
        "establecer marcos regulatorios claros para garantizar que su desarrollo sea ético, "
        "transparente y beneficioso para toda la sociedad."
    ),
    "¡Qué día tan bonito! Vamos a la playa con los niños y después comeremos paella en el puerto.",
]

CHINESE = [
    "你好，世界！",
    "请帮我把这段话翻译成英文。",
    (
        "人工智能是计算机科学的一个分支，它企图了解智能的实质，并生产出一种新的能以人类智能相似的方式"
        "做出反应的智能机器。该领域的研究包括机器人、语言识别、图像识别、自然语言处理和专家系统等。"
    ),
    "北京是中华人民共和国的首都，也是全国的政治、文化和国际交往中心。今天天气很好，我们去公园散步吧。",
]

JAPANESE = [
    "こんにちは、元気ですか？",
    (
        "東京は日本の首都であり、世界でも有数の大都市です。伝統的な寺院や神社と、最先端の高層ビルが"
        "共存しているのが特徴で、毎年多くの観光客が訪れます。カタカナのコンピューターやインターネットも"
        "日常的に使われています。"
    ),
    "すみません、駅までの道を教えていただけますか。",
]

KOREAN = [
    "안녕하세요! 오늘 날씨가 정말 좋네요.",
    "서울은 대한민국의 수도이며, 한강을 중심으로 발전한 대도시입니다.",
]

RUSSIAN = [
    "Привет, мир!",
    (
        "Москва — столица России, крупнейший по численности населения город страны и её "
        "политический, экономический и культурный центр. Город расположен на реке Москве в центре "
        "Восточно-Европейской равнины."
    ),
    "Не могли бы вы объяснить, как работает эта программа? Спасибо заранее.",
]

OTHER_SCRIPTS = [
    "مرحبا بالعالم! كيف حالك اليوم؟",
    "שלום עולם, מה שלומך?",
    "नमस्ते दुनिया! आप कैसे हैं?",
    "Γειά σου Κόσμε! Τι κάνεις σήμερα;",
    "Xin chào thế giới! Hôm nay trời đẹp quá.",
    "Merhaba dünya! Bugün hava çok güzel, değil mi?",
    "Cześć! Jak się masz? Dziękuję bardzo za pomoc.",
]

EMOJI = [
    "Great job! 🎉🎉🎉",
    "I love this 😍 so much ❤️",
    "🚀 Launch day! 🌕 Next stop: the moon 👩‍🚀",
    "👍",
    "Weather today: ☀️ 25°C, tomorrow 🌧️ 18°C",
    "Family: 👨‍👩‍👧‍👦 and flags 🇺🇸 🇩🇪 🇯🇵",
    "😂😂😂😂 that's hilarious 🤣",
]

SYMBOLS = [
    "→ ← ↑ ↓ ⇒ ∀x ∈ ℝ: x² ≥ 0 ∑ ∫ √2 ≈ 1.414 ≠ π",
    "Price: €12.99 / £10.50 / ¥1,800 — “quoted” ‘text’ … © 2024 ™ ®",
    "E = mc², H₂O, CO₂, ½ + ¼ = ¾",
    "ﬁnancial ﬂow, ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３, ①②③, Ⅻ",
    "<<<<>>>>!!!???...,,,;;;:::---___===+++***###@@@$$$%%%^^^&&&|||~~~```",
]

WHITESPACE = [
    "   leading spaces and trailing spaces   ",
    "tabs\tbetween\t\twords\t\t\tand more",
    "line one\n\n\n\nline two after blank lines\n\n\n",
    "    indented\n        more indented\n            even more\n",
    "a  b   c    d     e      f       g        h",
    "\n\n\n\n\n\n\n\n",
    "          ",
    "\r\nWindows\r\nline\r\nendings\r\n",
    "column1    column2    column3\nvalue1     value2     value3\n",
]


# --------------------------------------------------------------------------- #
# Generated material
# --------------------------------------------------------------------------- #


def _numbers(rng: random.Random) -> str:
    kind = rng.randrange(10)
    if kind == 0:
        return str(rng.randrange(10 ** rng.randrange(1, 16)))
    if kind == 1:
        return f"{rng.uniform(-1000, 1000):.{rng.randrange(1, 6)}f}"
    if kind == 2:
        return f"{rng.randrange(1950, 2030)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
    if kind == 3:
        return (
            f"{rng.randrange(1950, 2030)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
            f"T{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}Z"
        )
    if kind == 4:
        return f"+1 ({rng.randrange(200, 999)}) {rng.randrange(200, 999)}-{rng.randrange(10000):04d}"
    if kind == 5:
        return f"${rng.randrange(1, 10**7):,}.{rng.randrange(100):02d}"
    if kind == 6:
        return ", ".join(str(rng.randrange(1000)) for _ in range(rng.randrange(3, 20)))
    if kind == 7:
        months = [
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
        ]
        return f"on {rng.choice(months)} {rng.randrange(1, 29)}, {rng.randrange(1900, 2030)} at {rng.randrange(1, 13)}:{rng.randrange(60):02d} pm"
    if kind == 8:
        return f"{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"
    return f"0x{rng.randrange(16**8):08x} {rng.getrandbits(128):032x}"


def _url(rng: random.Random) -> str:
    scheme = rng.choice(["https://", "http://", ""])
    return f"{scheme}{rng.choice(URL_HOSTS)}/{rng.choice(URL_PATHS)}{rng.choice(URL_QUERIES)}"


def _chat(rng: random.Random) -> str:
    parts: list[str] = []
    if rng.random() < 0.3:
        parts.append(
            rng.choice(
                [
                    "You are a helpful assistant.",
                    "You are a senior Python developer. Answer concisely.",
                    "System: respond only in JSON.",
                ]
            )
        )
    for _ in range(rng.randrange(1, 4)):
        human = rng.choice(QUESTIONS + PROSE[:6])
        if rng.random() < 0.3:
            human += "\n\n" + rng.choice(PYTHON_CODE + JSON_SAMPLES + OTHER_CODE)
        parts.append(f"\n\nHuman: {human}")
        parts.append(f"\n\nAssistant: {rng.choice(ANSWERS)}")
    parts[-1] = "\n\nAssistant:"
    return "".join(parts)


ALL_POOLS: dict[str, list[str]] = {
    "prose": PROSE,
    "questions": QUESTIONS,
    "answers": ANSWERS,
    "python": PYTHON_CODE,
    "code": OTHER_CODE,
    "json": JSON_SAMPLES,
    "markdown": MARKDOWN,
    "german": GERMAN,
    "french": FRENCH,
    "spanish": SPANISH,
    "chinese": CHINESE,
    "japanese": JAPANESE,
    "korean": KOREAN,
    "russian": RUSSIAN,
    "other_scripts": OTHER_SCRIPTS,
    "emoji": EMOJI,
    "symbols": SYMBOLS,
    "whitespace": WHITESPACE,
}


def _truncate(rng: random.Random, text: str) -> str:
    """Cut text to a random prefix (sometimes mid-word) to vary lengths."""
    if len(text) < 8:
        return text
    return text[: rng.randrange(len(text) // 3, len(text) + 1)]


def build_corpus() -> list[str]:
    rng = random.Random(SEED)
    samples: list[str] = []
    # 1. every hand-written sample verbatim
    for pool in ALL_POOLS.values():
        samples.extend(pool)
    # 2. sanity strings from the reference notes
    samples += [
        "hello world!",
        "\n\nHuman: Hello, world!\n\nAssistant:",
        "\n\nHuman:",
        "\n\nAssistant:",
        " Hello! My name is Claude.",
    ]
    # 3. generated numbers, URLs, chats
    samples += [_numbers(rng) for _ in range(30)]
    samples += [f"See {_url(rng)} for more." if rng.random() < 0.5 else _url(rng) for _ in range(15)]
    samples += [_chat(rng) for _ in range(70)]
    # 4. truncated pieces of single samples (odd lengths, cut words)
    pools = list(ALL_POOLS.values())
    samples += [_truncate(rng, rng.choice(rng.choice(pools))) for _ in range(40)]
    # 5. random mixtures: a few samples from random pools joined by random separators
    for _ in range(110):
        k = rng.choice([1, 2, 2, 3, 4, 6])
        pieces: list[str] = []
        for _ in range(k):
            r = rng.random()
            if r < 0.08:
                pieces.append(_numbers(rng))
            elif r < 0.14:
                pieces.append(_url(rng))
            else:
                pieces.append(rng.choice(rng.choice(pools)))
        sep = rng.choice([" ", "\n", "\n\n", "  ", "\t", ""])
        samples.append(sep.join(pieces))
    # 6. a few long documents (2-5k chars) in a single language family
    for _ in range(8):
        pool = rng.choice(
            [
                PROSE,
                PYTHON_CODE + OTHER_CODE,
                GERMAN + FRENCH + SPANISH,
                CHINESE + JAPANESE,
                MARKDOWN + JSON_SAMPLES,
            ]
        )
        doc = ""
        target = rng.randrange(2000, 5000)
        while len(doc) < target:
            doc += rng.choice(pool) + "\n\n"
        samples.append(doc)
    # de-duplicate while keeping order; drop empties
    seen: set[str] = set()
    out: list[str] = []
    for s in samples:
        if s and s not in seen:
            seen.add(s)
            out.append(s)
    return out


# --------------------------------------------------------------------------- #
# Main
# --------------------------------------------------------------------------- #


def report(corpus: list[str], counts: list[int]) -> None:
    """Print the accuracy of ``proxy.translate.tokens.count_tokens`` on the corpus."""
    sys.path.insert(0, str(REPO_ROOT))
    from proxy.translate.tokens import count_tokens

    est = [count_tokens(t) for t in corpus]
    total_real, total_est = sum(counts), sum(est)
    print(
        f"aggregate: estimate {total_est} vs real {total_real} ({(total_est / total_real - 1) * 100:+.2f}%)"
    )
    rel = sorted(abs(e - r) / r for e, r in zip(est, counts, strict=True))
    for q in (0.5, 0.8, 0.9, 0.95):
        print(f"  p{int(q * 100)} |relative error| = {rel[int(q * len(rel))] * 100:.1f}%")
    for bound in (0.1, 0.2, 0.3):
        share = sum(r <= bound for r in rel) / len(rel)
        print(f"  within +-{bound:.0%}: {share:.1%} of samples")
    big = sorted(((e - r) / r, r, e, t) for e, r, t in zip(est, counts, corpus, strict=True) if r >= 20)
    share = sum(abs(b[0]) <= 0.2 for b in big) / len(big)
    print(f"  samples >= 20 tokens: {len(big)}, {share:.1%} within +-20%, worst:")
    for err, r, e, t in sorted(big, key=lambda b: -abs(b[0]))[:5]:
        print(f"    {err * 100:+.1f}% real {r} est {e} {t[:60]!r}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tokenizer", type=Path, help="path to anthropic/tokenizer.json (anthropic==0.38.0 wheel)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output JSON (default: {DEFAULT_OUT})")
    ap.add_argument("--allow-other-tokenizer", action="store_true", help="skip the sha256 check")
    ap.add_argument("--report", action="store_true", help="print the estimator's accuracy on the corpus")
    args = ap.parse_args(argv)

    try:
        import tokenizers  # type: ignore[import-not-found]
    except ImportError:
        print(
            "error: needs the HF `tokenizers` package (pip install tokenizers, in a separate venv)",
            file=sys.stderr,
        )
        return 2

    raw = args.tokenizer.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != EXPECTED_SHA256 and not args.allow_other_tokenizer:
        print(f"error: {args.tokenizer} has sha256 {digest}, expected {EXPECTED_SHA256}", file=sys.stderr)
        return 2
    tok = tokenizers.Tokenizer.from_str(raw.decode("utf-8"))

    corpus = build_corpus()
    counts = [len(enc.ids) for enc in tok.encode_batch(corpus)]
    data: dict[str, Any] = {
        "tokenizer_sha256": digest,
        "tokenizers_version": tokenizers.__version__,
        "source": "anthropic==0.38.0 wheel, anthropic/tokenizer.json",
        "generator": "scripts/calibrate_tokens.py",
        "seed": SEED,
        "samples": [{"text": t, "tokens": n} for t, n in zip(corpus, counts, strict=True)],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    print(f"wrote {len(corpus)} samples, {sum(counts)} tokens, {args.out.stat().st_size} bytes to {args.out}")

    if args.report:
        report(corpus, counts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
