"""What users may ask the scheduler for: the grammar and models (hubstock.limits), the server-side
check (hubstock.hub.options), the spawn form (hubstock.hub.form) and the trait types (hubstock.hub.traits)."""

from __future__ import annotations

import pytest
import traitlets

from hubstock.errors import HubstockError, SiteError
from hubstock.hub.batch import format_memory_pbs, format_memory_slurm
from hubstock.hub.form import render_options_form
from hubstock.hub.options import limits_from_config, options_from_form, validate_options
from hubstock.hub.traits import Memory, Walltime
from hubstock.limits import (
    Defaults,
    JobExtras,
    Limits,
    LimitsError,
    MiB,
    Options,
    OptionsError,
    Queue,
    Seconds,
    format_memory,
    format_walltime,
    parse_memory,
    parse_walltime,
)

QUEUES = [
    {
        "name": "debug",
        "description": "Short tests <script>alert(1)</script>",
        "max_cpus": 4,
        "max_memory": "16G",
        "max_gpus": 0,
        "max_walltime": "04:00:00",
    },
    {
        "name": "gpu",
        "description": "GPU nodes & friends",
        "max_cpus": 32,
        "max_memory": "256G",
        "max_gpus": 4,
        "max_walltime": "2-00:00:00",
    },
]
DEFAULTS = {"queue": "debug", "cpus": 1, "memory": "4G", "gpus": 0, "walltime": "01:00:00"}


@pytest.fixture
def limits() -> Limits:
    return limits_from_config(QUEUES, DEFAULTS)


# ----------------------------------------------------------------------------------------------------------
# walltime and memory


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("01:00:00", 3600),
        ("1:00:00", 3600),
        ("48:00:00", 172800),
        ("00:01:30", 90),
        ("1-12:00:00", 129600),
        ("0-00:00:59", 59),
        ("  04:00:00 ", 14400),
    ],
)
def test_parse_walltime(text, seconds):
    assert parse_walltime(text) == seconds


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "1",
        "90",
        "1:5",
        "2:15",  # minutes:seconds to Slurm, hours:minutes to PBS: refused
        "0:05",
        "1-12",  # Slurm's days-hours forms
        "1-12:30",
        "1-2:00:00",
        90,  # a number: minutes to Slurm, seconds to PBS
        0,
        "01:60:00",
        "01:00:60",
        "1-24:00:00",
        "01:00:00:00",
        "01 :00:00",
        "01:00:00\n",
        "\n01:00:00",
        "01:00\n:00",
        "\t01:00:00",
        "٠١:٠٠:٠٠",
        "01:00:0０",
        "-1:00:00",
        "+1:00:00",
        "1h",
        "12345:00:00",
        "1234-00:00:00",
        "x" * 1000,
        -1,
        10**9,
        1.5,
        True,
        None,
        ["01:00:00"],
    ],
)
def test_parse_walltime_refuses(bad):
    with pytest.raises(OptionsError, match="walltime must be"):
        parse_walltime(bad)


def test_format_walltime():
    assert format_walltime(0) == "00:00:00"
    assert format_walltime(3600) == "01:00:00"
    assert format_walltime(5400 + 7) == "01:30:07"
    assert format_walltime(172800) == "48:00:00"
    assert format_walltime(100 * 3600) == "100:00:00"
    with pytest.raises(ValueError):
        format_walltime(-1)
    with pytest.raises(TypeError):
        format_walltime(True)
    for text in ("01:00:00", "48:00:00", "00:01:00"):
        assert format_walltime(parse_walltime(text)) == text


@pytest.mark.parametrize(
    ("text", "mib"),
    [
        ("4G", 4096),
        ("4GB", 4096),
        ("4g", 4096),
        ("4gb", 4096),
        ("4GiB", 4096),
        ("4gib", 4096),
        ("512M", 512),
        ("512MB", 512),
        ("512m", 512),
        ("512MiB", 512),
        ("1.5G", 1536),
        ("0.5G", 512),
        ("0.1G", 102),  # rounded down to a whole MiB
        ("2T", 2 * 1024 * 1024),
        ("2TB", 2 * 1024 * 1024),
        ("4", 4096),  # a bare number means GiB
        ("1.5", 1536),
        (" 8G ", 8192),
        (4, 4096),
        (0, 0),
    ],
)
def test_parse_memory(text, mib):
    assert parse_memory(text) == mib


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "G",
        "4 G",
        "4K",
        "4KB",
        "4Gb ; rm -rf ~",
        "4G\n",
        "-4G",
        "+4G",
        "4e3M",
        "1.5555G",
        ".5G",
        "5.G",
        "1,5G",
        "4GiBB",
        "4Gıb",  # dotless i: case-insensitive matching must stay ASCII
        "٤G",
        "４G",
        "12345678G",
        "x" * 1000,
        -1,
        10**8,
        4.0,
        False,
        None,
        {"size": 4},
    ],
)
def test_parse_memory_refuses(bad):
    with pytest.raises(OptionsError, match="memory must be"):
        parse_memory(bad)


def test_format_memory():
    assert format_memory(4096) == "4G"
    assert format_memory(1536) == "1536M"
    assert format_memory(256) == "256M"
    assert format_memory_slurm(4096) == "4096M"
    assert format_memory_slurm(1536) == "1536M"
    assert format_memory_pbs(4096) == "4096mb"
    with pytest.raises(ValueError):
        format_memory_slurm(-1)
    with pytest.raises(TypeError):
        format_memory_pbs(1.5)  # type: ignore[arg-type]
    for text in ("4G", "1536M", "256M", "2048G"):
        assert format_memory(parse_memory(text)) == text


def test_errors_are_value_errors_and_hubstock_errors():
    assert issubclass(OptionsError, ValueError) and issubclass(OptionsError, HubstockError)
    assert issubclass(LimitsError, ValueError) and issubclass(LimitsError, SiteError)
    assert str(OptionsError("cpus must be 1.")) == "cpus must be 1."


# ----------------------------------------------------------------------------------------------------------
# the site's limits


def test_limits_from_config(limits):
    assert limits.default_queue == "debug"
    assert limits.queues == (
        Queue(
            name="debug",
            description="Short tests <script>alert(1)</script>",
            max_cpus=4,
            max_memory=MiB(16384),
            max_gpus=0,
            max_walltime=Seconds(14400),
        ),
        Queue(
            name="gpu",
            description="GPU nodes & friends",
            max_cpus=32,
            max_memory=MiB(262144),
            max_gpus=4,
            max_walltime=Seconds(172800),
        ),
    )
    assert (
        limits.defaults.cpus,
        limits.defaults.memory,
        limits.defaults.gpus,
        limits.defaults.walltime,
    ) == (
        1,
        4096,
        0,
        3600,
    )
    assert limits.has_gpus


def test_limits_from_config_optional_keys():
    limits = limits_from_config(
        [{"name": "short", "max_cpus": 2, "max_memory": 8, "max_walltime": "00:30:00"}],
        {"memory": "2G", "walltime": "0:30:00"},
    )
    assert limits.default_queue == "short"
    assert limits.queues[0] == Queue(
        name="short", description="", max_cpus=2, max_memory=MiB(8192), max_gpus=0, max_walltime=Seconds(1800)
    )
    assert (limits.defaults.cpus, limits.defaults.gpus) == (1, 0)
    assert not limits.has_gpus


@pytest.mark.parametrize(
    ("queues", "defaults", "match"),
    [
        ([], DEFAULTS, "at least one queue|non-empty list"),
        ("debug", DEFAULTS, "non-empty list"),
        ([{**QUEUES[0], "max_mem": "4G"}], DEFAULTS, r"unknown key 'max_mem'.*max_memory"),
        ([{**QUEUES[0], "name": "de bug"}], {**DEFAULTS, "queue": "de bug"}, "queue name"),
        ([{**QUEUES[0], "name": "$(reboot)"}], DEFAULTS, "queue name"),
        ([{**QUEUES[0], "name": "-x"}], DEFAULTS, "queue name"),
        ([{**QUEUES[0], "name": "q" * 65}], DEFAULTS, "queue name"),
        ([QUEUES[0], QUEUES[0]], DEFAULTS, "defined twice"),
        ([{k: v for k, v in QUEUES[0].items() if k != "max_cpus"}], DEFAULTS, "lacks 'max_cpus'"),
        ([{**QUEUES[0], "max_cpus": 0}], DEFAULTS, "max_cpus must be at least 1"),
        ([{**QUEUES[0], "max_cpus": "4"}], DEFAULTS, "max_cpus must be a whole number"),
        ([{**QUEUES[0], "max_cpus": True}], DEFAULTS, "max_cpus must be a whole number"),
        ([{**QUEUES[0], "max_gpus": -1}], DEFAULTS, "max_gpus must be at least 0"),
        ([{**QUEUES[0], "max_memory": "lots"}], DEFAULTS, "max_memory must be a size"),
        (
            [{**QUEUES[0], "max_memory": "128M"}],
            {**DEFAULTS, "memory": "128M"},
            "max_memory must be at least 256M",
        ),
        ([{**QUEUES[0], "max_walltime": "forever"}], DEFAULTS, "max_walltime must be"),
        ([{**QUEUES[0], "description": 3}], DEFAULTS, "description must be a string"),
        ([QUEUES[0]], {**DEFAULTS, "queue": "gpu"}, "default queue 'gpu' is not one of the queues: 'debug'"),
        ([QUEUES[0]], {**DEFAULTS, "cpus": 8}, r"default cpus 8 is more than .*'debug' allows \(4\)"),
        ([QUEUES[0]], {**DEFAULTS, "memory": "32G"}, r"default memory 32G is more than .* \(16G\)"),
        ([QUEUES[0]], {**DEFAULTS, "gpus": 1}, "default gpus 1 is more than"),
        ([QUEUES[0]], {**DEFAULTS, "walltime": "05:00:00"}, r"default walltime 05:00:00 .* \(04:00:00\)"),
        ([QUEUES[0]], {**DEFAULTS, "walltime": "00:00:30"}, "default walltime must be at least 00:01:00"),
        ([QUEUES[0]], {**DEFAULTS, "colour": "red"}, "the defaults: unknown key 'colour'"),
        ([QUEUES[0]], [], "defaults must be a mapping"),
    ],
)
def test_limits_from_config_refuses(queues, defaults, match):
    with pytest.raises(LimitsError, match=match):
        limits_from_config(queues, defaults)


def test_missing_defaults_take_the_one_fallback():
    # hubstock.toml, the spawner's configuration and the models share one set of fallbacks
    limits = limits_from_config([QUEUES[0]], {"queue": "debug", "walltime": "1:00:00"})
    assert limits.defaults == Defaults(queue="debug", walltime="1:00:00")
    assert (limits.defaults.cpus, limits.defaults.memory, limits.defaults.gpus) == (1, 4096, 0)
    assert Limits().queues == (Queue(name="batch", max_cpus=4, max_memory="16G", max_walltime="08:00:00"),)
    assert Limits().default_queue == "batch"


def test_the_models_read_and_write_the_grammar():
    q = Queue(name="gpu", max_cpus=8, max_memory="1.5G", max_gpus=2, max_walltime="1-00:00:00")
    assert (q.max_memory, q.max_walltime) == (1536, 86400)
    assert isinstance(q.max_memory, MiB) and isinstance(q.max_walltime, Seconds)
    assert q.model_dump(exclude_none=True) == {
        "name": "gpu",
        "description": "",
        "max_cpus": 8,
        "max_memory": "1536M",
        "max_gpus": 2,
        "max_walltime": "24:00:00",
    }
    assert Queue.model_validate(q.model_dump()) == q
    # a MiB or Seconds is taken as it is; a plain int memory is GiB; a walltime is always text
    assert Queue(name="q", max_cpus=1, max_memory=MiB(512), max_walltime=Seconds(120)).max_memory == 512
    assert Queue(name="q", max_cpus=1, max_memory=2, max_walltime="00:02:00").max_walltime == 120
    with pytest.raises(ValueError, match=r"max_walltime\n.*must be HH:MM:SS or D-HH:MM:SS"):
        Queue(name="q", max_cpus=1, max_memory=2, max_walltime=2)
    with pytest.raises(ValueError, match="max_memory"):
        Queue(name="q", max_cpus=1, max_memory=MiB(100), max_walltime="1:00:00")


@pytest.mark.parametrize(
    ("extras", "match"),
    [
        ({"account": "proj\n#SBATCH --uid=0"}, "account must be a name"),
        ({"account": "$(reboot)"}, "account must be a name"),
        ({"qos": "a b"}, "qos must be a name"),
        ({"reservation": "r;x"}, "reservation must be a name"),
        ({"constraint": "intel;reboot"}, "constraint must be a Slurm constraint"),
        ({"constraint": "a\nb"}, "constraint must be a Slurm constraint"),
        (
            {"directives": ["--exclusive"]},
            r"directives\.0 must be one '#SBATCH \.\.\.' or '#PBS \.\.\.' line",
        ),
        ({"directives": ["#SBATCH --exclusive\n#SBATCH --uid=0"]}, "without newlines"),
        ({"directives": ["#SBATCH --comment=$(reboot)"]}, "without newlines"),
        ({"directives": ["#SBATCH --comment=`reboot`"]}, "without newlines"),
        ({"directives": ["#SBATCH " + "x" * 200]}, "at most 200 characters"),
        ({"directives": "#SBATCH --exclusive"}, "directives"),
        ({"acount": "x"}, r"\[spawner\]: unknown key 'acount'; the keys are: account, reservation"),
    ],
)
def test_job_extras_are_checked(extras, match):
    with pytest.raises(LimitsError, match=match):
        limits_from_config(QUEUES, DEFAULTS, **extras)
    with pytest.raises(LimitsError, match=match.replace("\\[spawner\\]", "queue #1 \\('debug'\\)")):
        limits_from_config([{**QUEUES[0], **extras}], DEFAULTS)


def test_a_queue_overrides_the_sites_job_extras():
    limits = limits_from_config(
        [
            {**QUEUES[0], "account": "", "directives": ["#SBATCH --exclusive"]},
            {**QUEUES[1], "qos": "gpu", "constraint": "a100&ib"},
        ],
        DEFAULTS,
        account="proj42",
        qos="normal",
        directives=["#SBATCH --comment=hub"],
    )
    assert limits.extras_for("debug") == JobExtras(
        account="", qos="normal", directives=["#SBATCH --exclusive"]
    )
    assert limits.extras_for("gpu") == JobExtras(
        account="proj42", qos="gpu", constraint="a100&ib", directives=["#SBATCH --comment=hub"]
    )


def test_defaults_are_capped_at_the_chosen_queue():
    limits = limits_from_config(
        [
            {
                "name": "big",
                "max_cpus": 64,
                "max_memory": "512G",
                "max_gpus": 8,
                "max_walltime": "7-00:00:00",
            },
            {"name": "tiny", "max_cpus": 2, "max_memory": "1G", "max_walltime": "00:30:00"},
        ],
        {"queue": "big", "cpus": 8, "memory": "32G", "gpus": 2, "walltime": "12:00:00"},
    )
    assert validate_options({"queue": "tiny"}, limits) == Options(
        queue="tiny", cpus=2, memory=MiB(1024), gpus=0, walltime=Seconds(1800)
    )
    assert validate_options({}, limits) == Options(
        queue="big", cpus=8, memory=MiB(32768), gpus=2, walltime=Seconds(43200)
    )


# ----------------------------------------------------------------------------------------------------------
# validating what users send


def test_defaults_fill_missing_keys(limits):
    assert validate_options({}, limits) == Options(
        queue="debug", cpus=1, memory=MiB(4096), gpus=0, walltime=Seconds(3600)
    )
    assert validate_options({"cpus": 3}, limits) == Options(
        queue="debug", cpus=3, memory=MiB(4096), gpus=0, walltime=Seconds(3600)
    )
    # an empty string, as a cleared form field sends, means "not given"
    assert validate_options({"memory": [""], "walltime": "", "cpus": " "}, limits) == validate_options(
        {}, limits
    )


def test_form_shaped_input(limits):
    raw = {"queue": ["gpu"], "cpus": ["8"], "memory": ["1.5G"], "gpus": ["2"], "walltime": ["36:00:00"]}
    opts = validate_options(raw, limits)
    assert opts == Options(queue="gpu", cpus=8, memory=MiB(1536), gpus=2, walltime=Seconds(129600))
    assert opts.to_user_options() == {
        "queue": "gpu",
        "cpus": 8,
        "memory": "1536M",
        "gpus": 2,
        "walltime": "36:00:00",
    }


def test_rest_shaped_input(limits):
    raw = {"queue": "gpu", "cpus": 16, "memory": "64GB", "gpus": 4, "walltime": "1-06:30:00"}
    opts = validate_options(raw, limits)
    assert opts == Options(queue="gpu", cpus=16, memory=MiB(65536), gpus=4, walltime=Seconds(109800))
    assert opts.to_user_options() == {
        "queue": "gpu",
        "cpus": 16,
        "memory": "64G",
        "gpus": 4,
        "walltime": "30:30:00",
    }
    # ints: memory in GiB; a walltime is text (a number would be minutes to Slurm, seconds to PBS)
    assert validate_options({"memory": 8, "walltime": "1:30:00"}, limits).to_user_options() == {
        "queue": "debug",
        "cpus": 1,
        "memory": "8G",
        "gpus": 0,
        "walltime": "01:30:00",
    }


def test_canonical_options_round_trip(limits):
    for raw in ({}, {"queue": "gpu", "cpus": 3, "memory": "300M", "gpus": 1, "walltime": "2:05:00"}):
        opts = validate_options(raw, limits)
        assert validate_options(opts.to_user_options(), limits) == opts


def test_edges_of_the_ranges_are_allowed(limits):
    top = validate_options({"cpus": "4", "memory": "16G", "walltime": "04:00:00"}, limits)
    assert (top.cpus, top.memory, top.walltime) == (4, 16384, 14400)
    bottom = validate_options({"cpus": 1, "memory": "256M", "walltime": "00:01:00"}, limits)
    assert (bottom.cpus, bottom.memory, bottom.walltime) == (1, 256, 60)
    assert validate_options({"queue": "gpu", "gpus": 0}, limits).gpus == 0


def test_refusal_message_is_one_readable_sentence(limits):
    with pytest.raises(OptionsError) as info:
        validate_options({"cpus": "999"}, limits)
    assert (
        str(info.value) == "cpus must be a whole number from 1 to 4 on queue 'debug' (you asked for '999')."
    )


def test_unknown_key_is_named_with_the_allowed_ones(limits):
    with pytest.raises(OptionsError) as info:
        validate_options({"cmd": "x"}, limits)
    assert str(info.value) == (
        "unknown server option 'cmd'; the options are: queue, cpus, memory, gpus, walltime."
    )


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"cmd": "x"}, "unknown server option 'cmd'"),
        ({"cpus": "2", "_xsrf": "abc"}, "unknown server option '_xsrf'"),
        ({1: "x"}, "unknown server option 1;"),
        ({"cpus": "1; rm -rf ~"}, r"cpus must be a whole number from 1 to 4 .*'1; rm -rf ~'"),
        ({"cpus": ["1; rm -rf ~"]}, r"cpus must be .*'1; rm -rf ~'"),
        ({"queue": "$(reboot)"}, r"queue must be one of 'debug', 'gpu' \(you asked for '\$\(reboot\)'\)"),
        ({"queue": "`reboot`"}, "queue must be one of"),
        ({"queue": "debug\n#SBATCH --uid=0"}, "queue must be one of"),
        ({"queue": "nosuch"}, r"queue must be one of 'debug', 'gpu' \(you asked for 'nosuch'\)"),
        ({"queue": "DEBUG"}, "queue must be one of"),
        ({"queue": 1}, r"queue must be one of .*\(you asked for 1\)"),
        ({"walltime": "01:00:00\n"}, r"walltime must be .*'01:00:00\\n'"),
        ({"walltime": "01:00\n:00"}, "walltime must be"),
        ({"walltime": ["01:00:00\r\n#SBATCH -A root"]}, "walltime must be"),
        ({"memory": "4G\n"}, "memory must be"),
        ({"cpus": True}, r"cpus must be .*\(you asked for True\)"),
        ({"gpus": False}, r"gpus must be 0 on queue 'debug' \(you asked for False\)"),
        ({"walltime": True}, "walltime must be"),
        ({"memory": True}, "memory must be"),
        ({"cpus": {"$gt": 1}}, r"cpus must be .*\(you asked for a dict\)"),
        ({"queue": {"name": "debug"}}, r"queue must be one of .*\(you asked for a dict\)"),
        ({"memory": ["4G", "8G"]}, r"memory must be a single value \(you sent a list of 2 values\)"),
        ({"cpus": []}, r"cpus must be a single value \(you sent a list of 0 values\)"),
        ({"cpus": [["2"]]}, r"cpus must be .*\(you asked for a list of 1 values\)"),
        ({"cpus": [2]}, r"cpus must be .*\(you asked for 2\)"),  # form lists hold strings
        ({"cpus": None}, r"cpus must be .*\(you asked for None\)"),
        ({"walltime": None}, "walltime must be"),
        ({"cpus": 2.0}, r"cpus must be .*\(you asked for 2\.0\)"),
        ({"cpus": "2.0"}, "cpus must be"),
        ({"cpus": "+2"}, "cpus must be"),
        ({"cpus": "0x2"}, "cpus must be"),
        ({"cpus": "2_0"}, "cpus must be"),
        ({"cpus": "٣"}, r"cpus must be .*\(you asked for '٣'\)"),
        ({"cpus": "３"}, "cpus must be"),
        ({"gpus": "¹"}, "gpus must be"),
        ({"walltime": "٠١:٠٠:٠٠"}, "walltime must be"),
        ({"memory": "٤G"}, "memory must be"),
        ({"cpus": 0}, r"cpus must be a whole number from 1 to 4 on queue 'debug' \(you asked for 0\)"),
        ({"cpus": 5}, "from 1 to 4 on queue 'debug'"),
        ({"cpus": -1}, "cpus must be"),
        ({"cpus": 10**30}, r"\(you asked for a very large number\)"),
        ({"queue": "gpu", "cpus": "33"}, "from 1 to 32 on queue 'gpu'"),
        ({"gpus": 1}, r"gpus must be 0 on queue 'debug' \(you asked for 1\)"),
        ({"queue": "gpu", "gpus": "5"}, r"gpus must be a whole number from 0 to 4 on queue 'gpu'"),
        ({"queue": "gpu", "gpus": -1}, "gpus must be"),
        ({"memory": "17G"}, r"memory must be a size from 256M to 16G, like '4G' or '512M', on queue 'debug'"),
        ({"memory": "255M"}, "memory must be a size from 256M"),
        ({"memory": 0}, "memory must be"),
        ({"memory": "lots"}, r"memory must be .*'lots'"),
        ({"walltime": "04:00:01"}, r"walltime must be a duration from 00:01:00 to 04:00:00 .*'debug'"),
        ({"walltime": "00:00:59"}, "walltime must be a duration from 00:01:00"),
        ({"walltime": 0}, "walltime must be"),
        ({"queue": "gpu", "walltime": "2-00:00:01"}, "to 48:00:00 as HH:MM:SS or D-HH:MM:SS on queue 'gpu'"),
        ({"walltime": "4"}, "walltime must be"),
        (
            {"walltime": "2:15"},
            r"walltime must be .*as HH:MM:SS or D-HH:MM:SS on queue 'debug' \(you asked for '2:15'\)",
        ),
        ({"walltime": 90}, r"walltime must be .* \(you asked for 90\)"),
        ({"walltime": "1-2"}, "walltime must be"),
    ],
)
def test_refusals(limits, raw, match):
    with pytest.raises(OptionsError, match=match):
        validate_options(raw, limits)


def test_huge_and_odd_values_are_echoed_short(limits):
    for raw in (
        {"memory": "x" * 100_000},
        {"cpus": "9" * 65},
        {"walltime": "\n" * 1000},
        {"queue": "\u202e" * 500},
        {"cpus": ["y" * 5000]},
    ):
        with pytest.raises(OptionsError) as info:
            validate_options(raw, limits)
        message = str(info.value)
        assert len(message) < 200, message
        assert "\n" not in message and "\u202e" not in message
    with pytest.raises(OptionsError) as info:
        validate_options({"memory": "x" * 100_000}, limits)
    assert str(info.value).endswith("(you asked for '" + "x" * 40 + "'...).")


def test_length_limit(limits):
    assert validate_options({"cpus": " " * 62 + "2 "}, limits).cpus == 2  # exactly 64 characters
    with pytest.raises(OptionsError, match="cpus must be"):
        validate_options({"cpus": " " * 63 + "2 "}, limits)  # 65 characters


def test_not_a_mapping_is_refused(limits):
    for raw in (None, [], "cpus=2", [("cpus", "2")]):
        with pytest.raises(OptionsError, match="must be a mapping"):
            validate_options(raw, limits)  # type: ignore[arg-type]


def test_options_refuse_unsafe_values_even_when_built_by_hand():
    with pytest.raises(ValueError):
        Options(queue="debug; reboot", cpus=1, memory=MiB(1024), gpus=0, walltime=Seconds(60))
    with pytest.raises(ValueError):
        Options(queue="debug", cpus="1", memory=MiB(1024), gpus=0, walltime=Seconds(60))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Options(queue="debug", cpus=True, memory=MiB(1024), gpus=0, walltime=Seconds(60))


# ----------------------------------------------------------------------------------------------------------
# form data


def test_options_from_form():
    form = {
        "queue": ["gpu"],
        "cpus": ["2"],
        "memory": [""],
        "gpus": [],
        "walltime": ["01:00:00"],
        "_xsrf": ["t"],
    }
    assert options_from_form(form) == {"queue": "gpu", "cpus": "2", "walltime": "01:00:00"}
    assert options_from_form({}) == {}
    # unknown keys pass through here; validate_options refuses them
    assert options_from_form({"cmd": ["x"]}) == {"cmd": "x"}


def test_options_from_form_refuses_several_values():
    with pytest.raises(OptionsError, match=r"form field 'cpus' must have a single value \(it had 2\)"):
        options_from_form({"cpus": ["1", "2"]})
    with pytest.raises(OptionsError, match="must be a list"):
        options_from_form({"cpus": "2"})  # type: ignore[dict-item]
    with pytest.raises(OptionsError, match="must be text"):
        options_from_form({"upload_file": [b"bytes"]})  # type: ignore[list-item]


def test_form_then_validation(limits):
    form = {"queue": ["gpu"], "cpus": ["4"], "memory": [""], "gpus": ["1"], "walltime": ["10:00:00"]}
    assert validate_options(options_from_form(form), limits) == Options(
        queue="gpu", cpus=4, memory=MiB(4096), gpus=1, walltime=Seconds(36000)
    )


# ----------------------------------------------------------------------------------------------------------
# the spawn form


def test_render_options_form(limits):
    html = render_options_form(limits)
    assert html == render_options_form(limits_from_config(QUEUES, DEFAULTS))  # deterministic
    assert '<select name="queue" id="hubstock-queue" class="form-control">' in html
    assert (
        '<option value="debug" selected>debug: Short tests &lt;script&gt;alert(1)&lt;/script&gt;</option>'
        in html
    )
    assert '<option value="gpu">gpu: GPU nodes &amp; friends</option>' in html
    assert "<script>" not in html and "alert(1)</script>" not in html
    assert (
        '<input type="number" name="cpus" id="hubstock-cpus" class="form-control" '
        'min="1" max="32" step="1" value="1">'
    ) in html
    assert (
        '<input type="number" name="gpus" id="hubstock-gpus" class="form-control" '
        'min="0" max="4" step="1" value="0">'
    ) in html
    assert (
        '<input type="text" name="memory" id="hubstock-memory" class="form-control" value="4G" placeholder="4G"'
        in html
    )
    assert (
        '<input type="text" name="walltime" id="hubstock-walltime" class="form-control" '
        'value="01:00:00" placeholder="01:00:00" '
        'pattern="([0-9]{1,3}-([01][0-9]|2[0-3])|[0-9]{1,4}):[0-5][0-9]:[0-5][0-9]"'
    ) in html
    assert html.count('<div class="form-group">') == 5
    assert '<label for="hubstock-walltime">Walltime</label>' in html
    assert (
        '<thead><tr><th scope="col">Queue</th><th scope="col">CPUs</th><th scope="col">Memory</th>'
        '<th scope="col">GPUs</th><th scope="col">Walltime</th></tr></thead>'
    ) in html
    assert '<tr><th scope="row">debug</th><td>4</td><td>16G</td><td>0</td><td>04:00:00</td></tr>' in html
    assert '<tr><th scope="row">gpu</th><td>32</td><td>256G</td><td>4</td><td>48:00:00</td></tr>' in html


def test_render_options_form_without_gpus():
    limits = limits_from_config(
        [
            {"name": "short", "max_cpus": 2, "max_memory": "8G", "max_walltime": "02:00:00"},
            {
                "name": "long",
                "description": "Long jobs",
                "max_cpus": 8,
                "max_memory": "1536M",
                "max_walltime": "3-00:00:00",
            },
        ],
        {"queue": "long", "cpus": 2, "memory": "1G", "walltime": "1-00:00:00"},
    )
    html = render_options_form(limits)
    assert 'name="gpus"' not in html and "GPUs" not in html
    assert '<option value="short">short</option>' in html
    assert '<option value="long" selected>long: Long jobs</option>' in html
    assert 'max="8" step="1" value="2">' in html
    assert 'value="1G" placeholder="1G"' in html
    assert 'value="24:00:00" placeholder="24:00:00"' in html
    assert '<tr><th scope="row">long</th><td>8</td><td>1536M</td><td>72:00:00</td></tr>' in html


# ----------------------------------------------------------------------------------------------------------
# trait types for the hub's configuration


class Conf(traitlets.HasTraits):
    walltime = Walltime()
    memory = Memory()
    max_walltime = Walltime("4:00:00")
    max_memory = Memory(16)


def test_traits_normalize():
    c = Conf()
    assert (c.walltime, c.memory, c.max_walltime, c.max_memory) == ("01:00:00", "4G", "04:00:00", "16G")
    c.walltime = "2-00:00:00"
    c.memory = "1.5gb"
    assert (c.walltime, c.memory) == ("48:00:00", "1536M")
    c.walltime = "1:30:00"
    c.memory = 8
    assert (c.walltime, c.memory) == ("01:30:00", "8G")
    c.memory = "512MiB"
    assert c.memory == "512M"


@pytest.mark.parametrize(
    "bad", ["soon", "0:00", "4:00", "1-12", 90, "01:00:00; reboot", True, 2.5, None, "٠١:٠٠:٠٠"]
)
def test_walltime_trait_refuses(bad):
    c = Conf()
    with pytest.raises(
        traitlets.TraitError, match=r"The 'walltime' trait of a Conf instance expected a walltime"
    ):
        c.walltime = bad
    assert c.walltime == "01:00:00"


@pytest.mark.parametrize("bad", ["lots", "0", "4 G", "4K", False, 4.0, None, "٤G"])
def test_memory_trait_refuses(bad):
    c = Conf()
    with pytest.raises(
        traitlets.TraitError, match=r"The 'memory' trait of a Conf instance expected a memory size"
    ):
        c.memory = bad
    assert c.memory == "4G"
