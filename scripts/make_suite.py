#!/usr/bin/env python3
"""Writes src/env/suite/*.json: the built-in task suite.

Each task is a small Python repository written for this project: the buggy
tree (`files`), the fixed versions of the files the gold patch changes
(`fix`), and the test files after the test patch (`tests`). Patches are
made with git, so they are real unified diffs. Run from the repository root:
    python3 scripts/make_suite.py
"""
import json, os, subprocess, tempfile, textwrap

def d(s):
    return textwrap.dedent(s).lstrip("\n")

TASKS = []

def task(name, repo, issue, files, fix, tests, f2p, p2p):
    TASKS.append(dict(name=name, repo=repo, issue=d(issue), files={k: d(v) for k, v in files.items()},
                      fix={k: d(v) for k, v in fix.items()}, tests={k: d(v) for k, v in tests.items()},
                      f2p=f2p, p2p=p2p))

# 1. off-by-one
task("textstat-range", "acme/textstat", """
    `moving_average` drops the last window

    `textstat.moving_average([1, 2, 3, 4], 2)` returns `[1.5, 2.5]` but the
    window `[3, 4]` is missing: I expect `[1.5, 2.5, 3.5]`.
    """,
    {"textstat/__init__.py": "from .stats import mean, moving_average\n",
     "textstat/stats.py": """
        def mean(xs):
            if not xs:
                raise ValueError("mean of an empty sequence")
            return sum(xs) / len(xs)


        def moving_average(xs, window):
            if window <= 0:
                raise ValueError("window must be positive")
            out = []
            for i in range(len(xs) - window):
                out.append(mean(xs[i:i + window]))
            return out
        """,
     "tests/test_stats.py": """
        import pytest
        from textstat import mean, moving_average


        def test_mean():
            assert mean([1, 2, 3]) == 2


        def test_mean_empty():
            with pytest.raises(ValueError):
                mean([])


        def test_window_positive():
            with pytest.raises(ValueError):
                moving_average([1], 0)
        """},
    {"textstat/stats.py": """
        def mean(xs):
            if not xs:
                raise ValueError("mean of an empty sequence")
            return sum(xs) / len(xs)


        def moving_average(xs, window):
            if window <= 0:
                raise ValueError("window must be positive")
            out = []
            for i in range(len(xs) - window + 1):
                out.append(mean(xs[i:i + window]))
            return out
        """},
    {"tests/test_stats.py": """
        import pytest
        from textstat import mean, moving_average


        def test_mean():
            assert mean([1, 2, 3]) == 2


        def test_mean_empty():
            with pytest.raises(ValueError):
                mean([])


        def test_window_positive():
            with pytest.raises(ValueError):
                moving_average([1], 0)


        def test_moving_average_includes_last_window():
            assert moving_average([1, 2, 3, 4], 2) == [1.5, 2.5, 3.5]


        def test_moving_average_whole():
            assert moving_average([2, 4], 2) == [3.0]
        """},
    ["tests/test_stats.py::test_moving_average_includes_last_window", "tests/test_stats.py::test_moving_average_whole"],
    ["tests/test_stats.py::test_mean", "tests/test_stats.py::test_mean_empty", "tests/test_stats.py::test_window_positive"])

# 2. wrong constant
task("unitconv-constant", "acme/unitconv", """
    Miles to kilometres is wrong

    `unitconv.miles_to_km(1)` gives `1.6` but a mile is 1.609344 km. Long
    distances are off by kilometres.
    """,
    {"unitconv/__init__.py": "from .convert import miles_to_km, km_to_miles, celsius_to_fahrenheit\n",
     "unitconv/convert.py": """
        KM_PER_MILE = 1.6


        def miles_to_km(miles):
            return miles * KM_PER_MILE


        def km_to_miles(km):
            return km / KM_PER_MILE


        def celsius_to_fahrenheit(c):
            return c * 9 / 5 + 32
        """,
     "tests/test_convert.py": """
        from unitconv import celsius_to_fahrenheit


        def test_boiling():
            assert celsius_to_fahrenheit(100) == 212
        """},
    {"unitconv/convert.py": """
        KM_PER_MILE = 1.609344


        def miles_to_km(miles):
            return miles * KM_PER_MILE


        def km_to_miles(km):
            return km / KM_PER_MILE


        def celsius_to_fahrenheit(c):
            return c * 9 / 5 + 32
        """},
    {"tests/test_convert.py": """
        import math
        from unitconv import celsius_to_fahrenheit, miles_to_km, km_to_miles


        def test_boiling():
            assert celsius_to_fahrenheit(100) == 212


        def test_marathon():
            assert math.isclose(miles_to_km(26.2188), 42.195, rel_tol=1e-5)


        def test_round_trip():
            assert math.isclose(km_to_miles(miles_to_km(3.0)), 3.0)
            assert math.isclose(km_to_miles(1.609344), 1.0)
        """},
    ["tests/test_convert.py::test_marathon", "tests/test_convert.py::test_round_trip"],
    ["tests/test_convert.py::test_boiling"])

# 3. missing edge case
task("slugify-empty", "acme/slugs", """
    slugify crashes on strings without letters

    `slugify("!!!")` raises `IndexError: string index out of range`. It
    should return an empty string, like `slugify("")` does.
    """,
    {"slugs/__init__.py": "from .core import slugify\n",
     "slugs/core.py": """
        import re


        def slugify(text, sep="-"):
            if text == "":
                return ""
            words = re.findall(r"[a-z0-9]+", text.lower())
            slug = sep.join(words)
            if slug[0] == sep:
                slug = slug[1:]
            return slug
        """,
     "tests/test_core.py": """
        from slugs import slugify


        def test_basic():
            assert slugify("Hello, World!") == "hello-world"


        def test_sep():
            assert slugify("a b", sep="_") == "a_b"


        def test_empty():
            assert slugify("") == ""
        """},
    {"slugs/core.py": """
        import re


        def slugify(text, sep="-"):
            words = re.findall(r"[a-z0-9]+", text.lower())
            return sep.join(words)
        """},
    {"tests/test_core.py": """
        from slugs import slugify


        def test_basic():
            assert slugify("Hello, World!") == "hello-world"


        def test_sep():
            assert slugify("a b", sep="_") == "a_b"


        def test_empty():
            assert slugify("") == ""


        def test_only_punctuation():
            assert slugify("!!!") == ""
            assert slugify("  -- ") == ""
        """},
    ["tests/test_core.py::test_only_punctuation"],
    ["tests/test_core.py::test_basic", "tests/test_core.py::test_sep", "tests/test_core.py::test_empty"])

# 4. wrong exception
task("configparse-exception", "acme/kvconf", """
    Missing keys raise KeyError instead of ConfigError

    The docs say `Config.require("name")` raises `kvconf.ConfigError` when the
    key is absent, but it raises a bare `KeyError`, so `except ConfigError`
    in my app does not catch it.
    """,
    {"kvconf/__init__.py": "from .config import Config, ConfigError, parse\n",
     "kvconf/config.py": """
        class ConfigError(Exception):
            \"\"\"A configuration problem.\"\"\"


        def parse(text):
            values = {}
            for n, line in enumerate(text.splitlines(), 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                if "=" not in line:
                    raise ConfigError(f"line {n}: expected key=value")
                k, v = line.split("=", 1)
                values[k.strip()] = v.strip()
            return Config(values)


        class Config:
            def __init__(self, values):
                self.values = values

            def get(self, key, default=None):
                return self.values.get(key, default)

            def require(self, key):
                \"\"\"The value of key; ConfigError when it is missing.\"\"\"
                return self.values[key]
        """,
     "tests/test_config.py": """
        import pytest
        from kvconf import parse, ConfigError


        def test_parse():
            c = parse("a = 1\\n# note\\nb=two\\n")
            assert c.get("a") == "1" and c.require("b") == "two"


        def test_bad_line():
            with pytest.raises(ConfigError):
                parse("oops")
        """},
    {"kvconf/config.py": """
        class ConfigError(Exception):
            \"\"\"A configuration problem.\"\"\"


        def parse(text):
            values = {}
            for n, line in enumerate(text.splitlines(), 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                if "=" not in line:
                    raise ConfigError(f"line {n}: expected key=value")
                k, v = line.split("=", 1)
                values[k.strip()] = v.strip()
            return Config(values)


        class Config:
            def __init__(self, values):
                self.values = values

            def get(self, key, default=None):
                return self.values.get(key, default)

            def require(self, key):
                \"\"\"The value of key; ConfigError when it is missing.\"\"\"
                try:
                    return self.values[key]
                except KeyError:
                    raise ConfigError(f"missing required key {key!r}") from None
        """},
    {"tests/test_config.py": """
        import pytest
        from kvconf import parse, ConfigError


        def test_parse():
            c = parse("a = 1\\n# note\\nb=two\\n")
            assert c.get("a") == "1" and c.require("b") == "two"


        def test_bad_line():
            with pytest.raises(ConfigError):
                parse("oops")


        def test_require_missing_raises_config_error():
            with pytest.raises(ConfigError, match="name"):
                parse("a=1").require("name")
        """},
    ["tests/test_config.py::test_require_missing_raises_config_error"],
    ["tests/test_config.py::test_parse", "tests/test_config.py::test_bad_line"])

# 5. string formatting
task("money-format", "acme/ledger", """
    format_amount drops the leading zero of cents

    `format_amount(1205)` (cents) shows `$12.5` instead of `$12.05`, and
    thousands have no separator: `format_amount(123456789)` should be
    `$1,234,567.89`.
    """,
    {"ledger/__init__.py": "from .money import format_amount, parse_amount\n",
     "ledger/money.py": """
        def format_amount(cents):
            sign = "-" if cents < 0 else ""
            cents = abs(cents)
            return f"{sign}${cents // 100}.{cents % 100}"


        def parse_amount(text):
            text = text.replace("$", "").replace(",", "")
            units, _, frac = text.partition(".")
            return int(units) * 100 + int((frac + "00")[:2])
        """,
     "tests/test_money.py": """
        from ledger import format_amount, parse_amount


        def test_parse():
            assert parse_amount("$1,234.5") == 123450


        def test_format_simple():
            assert format_amount(1250) == "$12.50"
        """},
    {"ledger/money.py": """
        def format_amount(cents):
            sign = "-" if cents < 0 else ""
            cents = abs(cents)
            return f"{sign}${cents // 100:,}.{cents % 100:02d}"


        def parse_amount(text):
            text = text.replace("$", "").replace(",", "")
            units, _, frac = text.partition(".")
            return int(units) * 100 + int((frac + "00")[:2])
        """},
    {"tests/test_money.py": """
        from ledger import format_amount, parse_amount


        def test_parse():
            assert parse_amount("$1,234.5") == 123450


        def test_format_simple():
            assert format_amount(1250) == "$12.50"


        def test_format_leading_zero_cents():
            assert format_amount(1205) == "$12.05"
            assert format_amount(-7) == "-$0.07"


        def test_format_thousands():
            assert format_amount(123456789) == "$1,234,567.89"
        """},
    ["tests/test_money.py::test_format_leading_zero_cents", "tests/test_money.py::test_format_thousands"],
    ["tests/test_money.py::test_parse", "tests/test_money.py::test_format_simple"])

# 6. a fix spanning two files
task("inventory-two-files", "acme/stockroom", """
    Removing more items than in stock makes the count negative

    `Inventory.remove("bolt", 5)` with 3 bolts leaves -2 bolts. It should
    raise `OutOfStock` (which should carry the item name) and leave the
    count unchanged.
    """,
    {"stockroom/__init__.py": "from .errors import OutOfStock\nfrom .inventory import Inventory\n",
     "stockroom/errors.py": """
        class OutOfStock(Exception):
            pass
        """,
     "stockroom/inventory.py": """
        class Inventory:
            def __init__(self):
                self.counts = {}

            def add(self, item, n=1):
                if n <= 0:
                    raise ValueError("n must be positive")
                self.counts[item] = self.counts.get(item, 0) + n

            def remove(self, item, n=1):
                self.counts[item] = self.counts.get(item, 0) - n

            def count(self, item):
                return self.counts.get(item, 0)
        """,
     "tests/test_inventory.py": """
        import pytest
        from stockroom import Inventory


        def test_add_remove():
            inv = Inventory()
            inv.add("nut", 4)
            inv.remove("nut", 3)
            assert inv.count("nut") == 1


        def test_add_positive():
            with pytest.raises(ValueError):
                Inventory().add("nut", 0)
        """},
    {"stockroom/errors.py": """
        class OutOfStock(Exception):
            def __init__(self, item, wanted, available):
                super().__init__(f"{item}: wanted {wanted}, only {available} in stock")
                self.item = item
                self.wanted = wanted
                self.available = available
        """,
     "stockroom/inventory.py": """
        from .errors import OutOfStock


        class Inventory:
            def __init__(self):
                self.counts = {}

            def add(self, item, n=1):
                if n <= 0:
                    raise ValueError("n must be positive")
                self.counts[item] = self.counts.get(item, 0) + n

            def remove(self, item, n=1):
                have = self.counts.get(item, 0)
                if n > have:
                    raise OutOfStock(item, n, have)
                self.counts[item] = have - n

            def count(self, item):
                return self.counts.get(item, 0)
        """},
    {"tests/test_inventory.py": """
        import pytest
        from stockroom import Inventory, OutOfStock


        def test_add_remove():
            inv = Inventory()
            inv.add("nut", 4)
            inv.remove("nut", 3)
            assert inv.count("nut") == 1


        def test_add_positive():
            with pytest.raises(ValueError):
                Inventory().add("nut", 0)


        def test_remove_too_many():
            inv = Inventory()
            inv.add("bolt", 3)
            with pytest.raises(OutOfStock) as e:
                inv.remove("bolt", 5)
            assert e.value.item == "bolt" and e.value.available == 3
            assert inv.count("bolt") == 3
        """},
    ["tests/test_inventory.py::test_remove_too_many"],
    ["tests/test_inventory.py::test_add_remove", "tests/test_inventory.py::test_add_positive"])

# 7. off-by-one in ceil division
task("pager-last-page", "acme/pager", """
    Paginator loses the last partial page

    With 25 items and 10 per page, `Paginator(items, 10).num_pages` is 2 and
    `page(3)` raises. There should be 3 pages, the last holding 5 items.
    """,
    {"pager/__init__.py": "from .paginator import Paginator, PageError\n",
     "pager/paginator.py": """
        class PageError(IndexError):
            pass


        class Paginator:
            def __init__(self, items, per_page):
                if per_page < 1:
                    raise ValueError("per_page must be at least 1")
                self.items = list(items)
                self.per_page = per_page

            @property
            def num_pages(self):
                return max(1, len(self.items) // self.per_page)

            def page(self, number):
                if number < 1 or number > self.num_pages:
                    raise PageError(f"page {number} out of range")
                start = (number - 1) * self.per_page
                return self.items[start:start + self.per_page]
        """,
     "tests/test_paginator.py": """
        import pytest
        from pager import Paginator, PageError


        def test_exact_pages():
            p = Paginator(range(20), 10)
            assert p.num_pages == 2
            assert p.page(2) == list(range(10, 20))


        def test_empty_has_one_page():
            assert Paginator([], 5).num_pages == 1


        def test_out_of_range():
            with pytest.raises(PageError):
                Paginator(range(5), 5).page(2)
        """},
    {"pager/paginator.py": """
        class PageError(IndexError):
            pass


        class Paginator:
            def __init__(self, items, per_page):
                if per_page < 1:
                    raise ValueError("per_page must be at least 1")
                self.items = list(items)
                self.per_page = per_page

            @property
            def num_pages(self):
                return max(1, -(-len(self.items) // self.per_page))

            def page(self, number):
                if number < 1 or number > self.num_pages:
                    raise PageError(f"page {number} out of range")
                start = (number - 1) * self.per_page
                return self.items[start:start + self.per_page]
        """},
    {"tests/test_paginator.py": """
        import pytest
        from pager import Paginator, PageError


        def test_exact_pages():
            p = Paginator(range(20), 10)
            assert p.num_pages == 2
            assert p.page(2) == list(range(10, 20))


        def test_empty_has_one_page():
            assert Paginator([], 5).num_pages == 1


        def test_out_of_range():
            with pytest.raises(PageError):
                Paginator(range(5), 5).page(2)


        def test_partial_last_page():
            p = Paginator(range(25), 10)
            assert p.num_pages == 3
            assert p.page(3) == [20, 21, 22, 23, 24]
        """},
    ["tests/test_paginator.py::test_partial_last_page"],
    ["tests/test_paginator.py::test_exact_pages", "tests/test_paginator.py::test_empty_has_one_page", "tests/test_paginator.py::test_out_of_range"])

# 8. string vs numeric comparison
task("semver-compare", "acme/semverlite", """
    Version comparison is lexicographic

    `Version.parse("1.10.0") > Version.parse("1.9.0")` is False. Parts must
    compare as numbers.
    """,
    {"semverlite/__init__.py": "from .version import Version\n",
     "semverlite/version.py": """
        from functools import total_ordering


        @total_ordering
        class Version:
            def __init__(self, major, minor, patch):
                self.parts = (major, minor, patch)

            @classmethod
            def parse(cls, text):
                pieces = text.strip().lstrip("v").split(".")
                if len(pieces) != 3:
                    raise ValueError(f"not a version: {text!r}")
                return cls(*pieces)

            def __eq__(self, other):
                return self.parts == other.parts

            def __lt__(self, other):
                return self.parts < other.parts

            def __str__(self):
                return ".".join(str(p) for p in self.parts)
        """,
     "tests/test_version.py": """
        import pytest
        from semverlite import Version


        def test_str():
            assert str(Version.parse("v1.2.3")) == "1.2.3"


        def test_bad():
            with pytest.raises(ValueError):
                Version.parse("1.2")


        def test_simple_order():
            assert Version.parse("1.2.3") < Version.parse("1.2.4")
        """},
    {"semverlite/version.py": """
        from functools import total_ordering


        @total_ordering
        class Version:
            def __init__(self, major, minor, patch):
                self.parts = (int(major), int(minor), int(patch))

            @classmethod
            def parse(cls, text):
                pieces = text.strip().lstrip("v").split(".")
                if len(pieces) != 3 or not all(p.isdigit() for p in pieces):
                    raise ValueError(f"not a version: {text!r}")
                return cls(*pieces)

            def __eq__(self, other):
                return self.parts == other.parts

            def __lt__(self, other):
                return self.parts < other.parts

            def __str__(self):
                return ".".join(str(p) for p in self.parts)
        """},
    {"tests/test_version.py": """
        import pytest
        from semverlite import Version


        def test_str():
            assert str(Version.parse("v1.2.3")) == "1.2.3"


        def test_bad():
            with pytest.raises(ValueError):
                Version.parse("1.2")


        def test_simple_order():
            assert Version.parse("1.2.3") < Version.parse("1.2.4")


        def test_numeric_order():
            assert Version.parse("1.10.0") > Version.parse("1.9.0")
            assert Version.parse("10.0.0") > Version.parse("9.99.99")


        def test_non_numeric_rejected():
            with pytest.raises(ValueError):
                Version.parse("1.x.0")
        """},
    ["tests/test_version.py::test_numeric_order", "tests/test_version.py::test_non_numeric_rejected"],
    ["tests/test_version.py::test_str", "tests/test_version.py::test_bad", "tests/test_version.py::test_simple_order"])

# 9. header handling
task("csvsum-header", "acme/csvsum", """
    column_total counts the header row when the column is numeric-looking

    With `--header`, `column_total(text, "2024", header=True)` adds the
    header cell `2024` to the total. The header row must never be summed,
    and blank lines should be skipped.
    """,
    {"csvsum/__init__.py": "from .total import column_total\n",
     "csvsum/total.py": """
        import csv
        import io


        def column_total(text, column, header=True):
            rows = list(csv.reader(io.StringIO(text)))
            if header:
                idx = rows[0].index(column)
            else:
                idx = int(column)
            total = 0.0
            for row in rows:
                try:
                    total += float(row[idx])
                except ValueError:
                    continue
            return total
        """,
     "tests/test_total.py": """
        from csvsum import column_total


        def test_named_column():
            assert column_total("a,b\\n1,2\\n3,4\\n", "b") == 6.0


        def test_index_column():
            assert column_total("1,2\\n3,4\\n", "0", header=False) == 4.0
        """},
    {"csvsum/total.py": """
        import csv
        import io


        def column_total(text, column, header=True):
            rows = [r for r in csv.reader(io.StringIO(text)) if r]
            if header:
                idx = rows[0].index(column)
                rows = rows[1:]
            else:
                idx = int(column)
            total = 0.0
            for row in rows:
                try:
                    total += float(row[idx])
                except ValueError:
                    continue
            return total
        """},
    {"tests/test_total.py": """
        from csvsum import column_total


        def test_named_column():
            assert column_total("a,b\\n1,2\\n3,4\\n", "b") == 6.0


        def test_index_column():
            assert column_total("1,2\\n3,4\\n", "0", header=False) == 4.0


        def test_numeric_header_not_summed():
            assert column_total("name,2024\\nx,10\\ny,5\\n", "2024") == 15.0


        def test_blank_lines_skipped():
            assert column_total("a\\n1\\n\\n2\\n", "a") == 3.0
        """},
    ["tests/test_total.py::test_numeric_header_not_summed", "tests/test_total.py::test_blank_lines_skipped"],
    ["tests/test_total.py::test_named_column", "tests/test_total.py::test_index_column"])

# 10. wrong operator
task("retry-backoff", "acme/retrying", """
    Exponential backoff grows linearly

    `backoff_delays(base=0.5, factor=2, attempts=4)` returns
    `[0.5, 2.5, 4.5, 6.5]`; it should be `[0.5, 1.0, 2.0, 4.0]`, and the
    `cap` argument should bound each delay.
    """,
    {"retrying/__init__.py": "from .backoff import backoff_delays, retry\n",
     "retrying/backoff.py": """
        def backoff_delays(base, factor, attempts, cap=None):
            delays = []
            d = base
            for _ in range(attempts):
                delays.append(d)
                d = d + factor
            return delays


        def retry(fn, attempts, sleep=lambda s: None, base=0.1, factor=2):
            last = None
            for delay in backoff_delays(base, factor, attempts):
                try:
                    return fn()
                except Exception as e:  # noqa: BLE001
                    last = e
                    sleep(delay)
            raise last
        """,
     "tests/test_backoff.py": """
        import pytest
        from retrying import retry


        def test_retry_succeeds():
            calls = []

            def f():
                calls.append(1)
                if len(calls) < 3:
                    raise OSError("flaky")
                return "ok"

            assert retry(f, attempts=5) == "ok"


        def test_retry_gives_up():
            with pytest.raises(OSError):
                retry(lambda: (_ for _ in ()).throw(OSError("down")), attempts=2)
        """},
    {"retrying/backoff.py": """
        def backoff_delays(base, factor, attempts, cap=None):
            delays = []
            d = base
            for _ in range(attempts):
                delays.append(d if cap is None else min(d, cap))
                d = d * factor
            return delays


        def retry(fn, attempts, sleep=lambda s: None, base=0.1, factor=2):
            last = None
            for delay in backoff_delays(base, factor, attempts):
                try:
                    return fn()
                except Exception as e:  # noqa: BLE001
                    last = e
                    sleep(delay)
            raise last
        """},
    {"tests/test_backoff.py": """
        import pytest
        from retrying import retry, backoff_delays


        def test_retry_succeeds():
            calls = []

            def f():
                calls.append(1)
                if len(calls) < 3:
                    raise OSError("flaky")
                return "ok"

            assert retry(f, attempts=5) == "ok"


        def test_retry_gives_up():
            with pytest.raises(OSError):
                retry(lambda: (_ for _ in ()).throw(OSError("down")), attempts=2)


        def test_exponential():
            assert backoff_delays(0.5, 2, 4) == [0.5, 1.0, 2.0, 4.0]


        def test_cap():
            assert backoff_delays(1, 3, 4, cap=10) == [1, 3, 9, 10]
        """},
    ["tests/test_backoff.py::test_exponential", "tests/test_backoff.py::test_cap"],
    ["tests/test_backoff.py::test_retry_succeeds", "tests/test_backoff.py::test_retry_gives_up"])

# 11. infinite loop / edge case on long words (unittest-style tests, run by pytest)
task("wordwrap-long", "acme/wrapper", """
    wrap() lets a long word overflow the width

    `wrap("abcdefghij xy", 4)` returns `["abcdefghij", "xy"]`: the first line
    is 10 characters wide. Words longer than the width should be split
    across lines, so that no line is wider than `width`.
    """,
    {"wrapper/__init__.py": "from .wrap import wrap\n",
     "wrapper/wrap.py": """
        def wrap(text, width):
            if width < 1:
                raise ValueError("width must be at least 1")
            lines, line = [], ""
            words = text.split()
            i = 0
            while i < len(words):
                w = words[i]
                if not line:
                    if len(w) <= width:
                        line = w
                        i += 1
                    else:
                        line = w
                        i += 1
                elif len(line) + 1 + len(w) <= width:
                    line += " " + w
                    i += 1
                else:
                    lines.append(line)
                    line = ""
            if line:
                lines.append(line)
            return lines
        """,
     "tests/test_wrap.py": """
        import unittest
        from wrapper import wrap


        class WrapTest(unittest.TestCase):
            def test_simple(self):
                self.assertEqual(wrap("aa bb cc", 5), ["aa bb", "cc"])

            def test_width_checked(self):
                with self.assertRaises(ValueError):
                    wrap("x", 0)
        """},
    {"wrapper/wrap.py": """
        def wrap(text, width):
            if width < 1:
                raise ValueError("width must be at least 1")
            lines, line = [], ""
            words = text.split()
            i = 0
            while i < len(words):
                w = words[i]
                if not line:
                    if len(w) <= width:
                        line = w
                        i += 1
                    else:
                        lines.append(w[:width])
                        words[i] = w[width:]
                elif len(line) + 1 + len(w) <= width:
                    line += " " + w
                    i += 1
                else:
                    lines.append(line)
                    line = ""
            if line:
                lines.append(line)
            return lines
        """},
    {"tests/test_wrap.py": """
        import unittest
        from wrapper import wrap


        class WrapTest(unittest.TestCase):
            def test_simple(self):
                self.assertEqual(wrap("aa bb cc", 5), ["aa bb", "cc"])

            def test_width_checked(self):
                with self.assertRaises(ValueError):
                    wrap("x", 0)

            def test_long_word_split(self):
                self.assertEqual(wrap("abcdefghij xy", 4), ["abcd", "efgh", "ij", "xy"])
        """},
    ["tests/test_wrap.py::WrapTest::test_long_word_split"],
    ["tests/test_wrap.py::WrapTest::test_simple", "tests/test_wrap.py::WrapTest::test_width_checked"])

# 12. leap year rule
task("dateparse-leap", "acme/calendarx", """
    Feb 29 1900 accepted, Feb 29 2000 rejected

    `is_valid_date(1900, 2, 29)` is True and `is_valid_date(2000, 2, 29)` is
    False: the century rule of the Gregorian calendar is backwards.
    """,
    {"calendarx/__init__.py": "from .dates import is_leap, days_in_month, is_valid_date\n",
     "calendarx/dates.py": """
        DAYS = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]


        def is_leap(year):
            if year % 400 == 0:
                return False
            if year % 100 == 0:
                return True
            return year % 4 == 0


        def days_in_month(year, month):
            if not 1 <= month <= 12:
                raise ValueError(f"month {month} out of range")
            if month == 2 and is_leap(year):
                return 29
            return DAYS[month - 1]


        def is_valid_date(year, month, day):
            try:
                return 1 <= day <= days_in_month(year, month)
            except ValueError:
                return False
        """,
     "tests/test_dates.py": """
        from calendarx import days_in_month, is_valid_date, is_leap


        def test_plain_leap():
            assert is_leap(2024) and not is_leap(2023)


        def test_month_lengths():
            assert days_in_month(2023, 1) == 31 and days_in_month(2023, 4) == 30


        def test_bad_month():
            assert not is_valid_date(2023, 13, 1)
        """},
    {"calendarx/dates.py": """
        DAYS = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]


        def is_leap(year):
            if year % 400 == 0:
                return True
            if year % 100 == 0:
                return False
            return year % 4 == 0


        def days_in_month(year, month):
            if not 1 <= month <= 12:
                raise ValueError(f"month {month} out of range")
            if month == 2 and is_leap(year):
                return 29
            return DAYS[month - 1]


        def is_valid_date(year, month, day):
            try:
                return 1 <= day <= days_in_month(year, month)
            except ValueError:
                return False
        """},
    {"tests/test_dates.py": """
        from calendarx import days_in_month, is_valid_date, is_leap


        def test_plain_leap():
            assert is_leap(2024) and not is_leap(2023)


        def test_month_lengths():
            assert days_in_month(2023, 1) == 31 and days_in_month(2023, 4) == 30


        def test_bad_month():
            assert not is_valid_date(2023, 13, 1)


        def test_century_rule():
            assert not is_valid_date(1900, 2, 29)
            assert is_valid_date(2000, 2, 29)
        """},
    ["tests/test_dates.py::test_century_rule"],
    ["tests/test_dates.py::test_plain_leap", "tests/test_dates.py::test_month_lengths", "tests/test_dates.py::test_bad_month"])

# 13. boundary condition (< vs <=) with an injected clock
task("cache-ttl", "acme/ttlcache", """
    Entries are still returned at exactly their expiry time

    With `ttl=10`, an entry set at t=0 is still returned by `get` at t=10.
    The docs say an entry lives for `ttl` seconds, so at t=10 it must be
    gone; `len(cache)` should not count expired entries either.
    """,
    {"ttlcache/__init__.py": "from .cache import TTLCache\n",
     "ttlcache/cache.py": """
        import time


        class TTLCache:
            def __init__(self, ttl, clock=time.monotonic):
                self.ttl = ttl
                self.clock = clock
                self.data = {}

            def set(self, key, value):
                self.data[key] = (value, self.clock() + self.ttl)

            def get(self, key, default=None):
                item = self.data.get(key)
                if item is None:
                    return default
                value, expires = item
                if self.clock() > expires:
                    del self.data[key]
                    return default
                return value

            def __len__(self):
                return len(self.data)
        """,
     "tests/test_cache.py": """
        from ttlcache import TTLCache


        class Clock:
            def __init__(self):
                self.t = 0.0

            def __call__(self):
                return self.t


        def test_get_fresh():
            c = TTLCache(10, clock=Clock())
            c.set("a", 1)
            assert c.get("a") == 1


        def test_missing_default():
            assert TTLCache(1, clock=Clock()).get("x", 7) == 7
        """},
    {"ttlcache/cache.py": """
        import time


        class TTLCache:
            def __init__(self, ttl, clock=time.monotonic):
                self.ttl = ttl
                self.clock = clock
                self.data = {}

            def set(self, key, value):
                self.data[key] = (value, self.clock() + self.ttl)

            def get(self, key, default=None):
                item = self.data.get(key)
                if item is None:
                    return default
                value, expires = item
                if self.clock() >= expires:
                    del self.data[key]
                    return default
                return value

            def __len__(self):
                now = self.clock()
                return sum(1 for _, expires in self.data.values() if now < expires)
        """},
    {"tests/test_cache.py": """
        from ttlcache import TTLCache


        class Clock:
            def __init__(self):
                self.t = 0.0

            def __call__(self):
                return self.t


        def test_get_fresh():
            c = TTLCache(10, clock=Clock())
            c.set("a", 1)
            assert c.get("a") == 1


        def test_missing_default():
            assert TTLCache(1, clock=Clock()).get("x", 7) == 7


        def test_expired_at_ttl():
            clock = Clock()
            c = TTLCache(10, clock=clock)
            c.set("a", 1)
            clock.t = 10.0
            assert c.get("a") is None


        def test_len_skips_expired():
            clock = Clock()
            c = TTLCache(5, clock=clock)
            c.set("a", 1)
            clock.t = 3.0
            c.set("b", 2)
            clock.t = 6.0
            assert len(c) == 1
        """},
    ["tests/test_cache.py::test_expired_at_ttl", "tests/test_cache.py::test_len_skips_expired"],
    ["tests/test_cache.py::test_get_fresh", "tests/test_cache.py::test_missing_default"])


def git(cwd, *args):
    env = dict(os.environ, GIT_AUTHOR_NAME="a", GIT_AUTHOR_EMAIL="a@a.invalid", GIT_COMMITTER_NAME="a",
               GIT_COMMITTER_EMAIL="a@a.invalid", GIT_CONFIG_GLOBAL="/dev/null", GIT_CONFIG_NOSYSTEM="1")
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def write(root, files):
    for path, content in files.items():
        p = os.path.join(root, path)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write(content)


def diff(files_before, changes):
    with tempfile.TemporaryDirectory() as tmp:
        write(tmp, files_before)
        git(tmp, "init", "-q")
        git(tmp, "add", "-A")
        git(tmp, "commit", "-q", "-m", "base")
        write(tmp, changes)
        git(tmp, "add", "-A")
        return git(tmp, "diff", "--cached", "--no-color", "HEAD")


def main():
    out_dir = os.path.join("src", "env", "suite")
    os.makedirs(out_dir, exist_ok=True)
    for t in TASKS:
        for k in t["fix"]:
            assert not k.startswith("tests/"), (t["name"], k)
        bundle = {
            "instance_id": "appliance__" + t["name"],
            "repo": t["repo"],
            "problem_statement": t["issue"],
            "files": t["files"],
            "patch": diff(t["files"], t["fix"]),
            "test_patch": diff(t["files"], t["tests"]),
            "FAIL_TO_PASS": t["f2p"],
            "PASS_TO_PASS": t["p2p"],
        }
        path = os.path.join(out_dir, t["name"] + ".json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(bundle, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    print(f"wrote {len(TASKS)} tasks to {out_dir}")


if __name__ == "__main__":
    main()
