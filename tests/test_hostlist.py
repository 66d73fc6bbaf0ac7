"""Host lists: expand, compress, and the errors people see."""
import pytest

from rmsbatch.core.hostlist import MAX_NAMES, Hostlist, HostlistError, compress, expand, natural_key


@pytest.mark.parametrize("text, names", [
    ("gpu[001-003,007]", ["gpu001", "gpu002", "gpu003", "gpu007"]),
    ("a[1-2]b[3-4]", ["a1b3", "a1b4", "a2b3", "a2b4"]),
    ("n1,n[3-4]", ["n1", "n3", "n4"]),
    ("gpu1-[5-6]", ["gpu1-5", "gpu1-6"]),
    ("node[8-11]", ["node8", "node9", "node10", "node11"]),
    ("gpu[098-100]", ["gpu098", "gpu099", "gpu100"]),
    ("x[07]", ["x07"]),
    ("login", ["login"]),
    ("n[1-2].ib", ["n1.ib", "n2.ib"]),
    (" n1 , n2 ", ["n1", "n2"]),
    ("n1,n1,n[1-2]", ["n1", "n2"]),
    ("", []),
])
def test_expand(text, names):
    assert expand(text) == names


@pytest.mark.parametrize("names, text", [
    (["gpu001", "gpu002", "gpu003", "gpu007"], "gpu[001-003,007]"),
    (["gpu007", "gpu001", "gpu003", "gpu002"], "gpu[001-003,007]"),
    (["n10", "n2", "n1"], "n[1-2,10]"),
    (["a1b3", "a1b4", "a2b3", "a2b4"], "a[1-2]b[3-4]"),
    (["gpu098", "gpu099", "gpu100"], "gpu[098-100]"),
    (["n1", "n01"], "n1,n01"),
    (["login", "gpu1", "gpu2"], "gpu[1-2],login"),
    (["gpu1-5", "gpu1-6"], "gpu1-[5-6]"),
    (["x"], "x"),
    ([], ""),
])
def test_compress(names, text):
    assert compress(names) == text


@pytest.mark.parametrize("text", [
    "gpu[001-016]", "a[1-2]b[3-4]", "n[1,3-4,10]", "gpu[01-02],cpu[1-3],login",
    "rack[1-2]-node[01-04]", "gpu[098-100,1000]",
])
def test_round_trip(text):
    names = expand(text)
    assert sorted(expand(compress(names))) == sorted(names)


def test_compress_is_natural_order():
    names = [f"n{i}" for i in (10, 2, 1, 33, 3)]
    assert compress(names) == "n[1-3,10,33]"
    assert sorted(names, key=natural_key) == ["n1", "n2", "n3", "n10", "n33"]


@pytest.mark.parametrize("text, words", [
    ("gpu[3-1]", ["'3-1'", "3 is greater than 1"]),
    ("gpu[1-3", ["unbalanced", "missing ']'"]),
    ("gpu1-3]", ["unbalanced ']'"]),
    ("gpu[[1]]", ["nested"]),
    ("gpu[]", ["empty brackets"]),
    ("gpu[a-c]", ["bad range 'a-c'"]),
    ("gpu[1-]", ["bad range"]),
    ("gpu 1", ["space"]),
])
def test_expand_errors(text, words):
    with pytest.raises(HostlistError) as info:
        expand(text)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_expand_limit():
    assert len(expand(f"n[1-{MAX_NAMES}]")) == MAX_NAMES
    with pytest.raises(HostlistError, match="more than 100,000"):
        expand(f"n[1-{MAX_NAMES + 1}]")
    with pytest.raises(HostlistError, match="more than 100,000"):
        expand("n[1-400]x[1-400]")          # counted before it is built


def test_hostlist_error_is_value_error():
    assert issubclass(HostlistError, ValueError)


def test_hostlist_value_type():
    h = Hostlist("gpu[001-002],gpu004")
    assert len(h) == 3
    assert "gpu002" in h and "gpu003" not in h
    assert str(h) == "gpu[001-002,004]"
    assert list(h) == ["gpu001", "gpu002", "gpu004"]
    assert h == Hostlist(["gpu004", "gpu001", "gpu002"])
    assert repr(h) == "Hostlist('gpu[001-002,004]')"
