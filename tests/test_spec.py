"""Detector specs: canonical strings round-trip, validity rules, clear errors; the stage-one space."""
from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smnas.errors import SpecError
from smnas.models.spec import (
    BackboneSpec, DetectorSpec, HeadSpec, NeckSpec, RPNSpec, parse_spec, spec_hash,
)
from smnas.search.space import StageOneSpace, load_space

PAPER = "config/paper.yaml"


@st.composite
def specs(draw):
    head = draw(st.sampled_from(["2fc", "retina", "cascade"]))
    rpn = "none" if head == "retina" else draw(st.sampled_from(["rpn", "garpn"]))
    first = draw(st.integers(1, 4))
    neck = draw(st.one_of(st.just(NeckSpec()), st.builds(
        lambda last, c: NeckSpec("fpn", first, last, c), st.integers(first, 6), st.integers(8, 512))))
    return DetectorSpec(
        BackboneSpec(draw(st.sampled_from(["resnet18", "resnet50", "resnext101", "mobilenetv2"])),
                     draw(st.floats(0.05, 4.0, allow_nan=False))),
        neck, RPNSpec(rpn),
        HeadSpec(head, draw(st.sampled_from([2, 3, 4])) if head == "cascade" else 1,
                 1024 if head == "retina" else draw(st.sampled_from([64, 256, 1024]))),
        (draw(st.integers(32, 2000)), draw(st.integers(32, 2000))),
        draw(st.sampled_from(["bn", "gnws"])),
    )


@settings(max_examples=300, deadline=None)
@given(specs())
def test_canonical_string_round_trips(spec):
    text = str(spec)
    assert parse_spec(text) == spec
    assert str(parse_spec(text)) == text


def test_example_strings():
    s = parse_spec("resnet50+fpn:P2-P5:c128+rpn+cascade3+800x600+bn")
    assert s.backbone == BackboneSpec("resnet50") and s.neck == NeckSpec("fpn", 2, 5, 128)
    assert s.head == HeadSpec("cascade", 3, 1024) and s.input_size == (800, 600)
    assert str(parse_spec("basicblock_64_1-21-21-12+fpn:P2-P5:c128+rpn+2fc+512x512+gnws")).startswith("basicblock_64_1-21-21-12+")


def test_spec_hash_is_the_sha1_prefix_of_the_canonical_string():
    text = "resnet50+fpn:P2-P5:c128+rpn+cascade3+800x600+bn"
    expected = hashlib.sha1(b"resnet50+fpn:P2-P5:c128+rpn+cascade3+800x600+bn").hexdigest()
    assert spec_hash(parse_spec(text)) == spec_hash(text) == expected[:12]
    assert spec_hash(text, length=40) == expected
    # one field apart: another canonical string, another hash
    assert spec_hash("resnet50+fpn:P2-P5:c128+rpn+cascade2+800x600+bn") != spec_hash(text)


@pytest.mark.parametrize("variant", [
    "resnet18@0.250+none+rpn+cascade3:1024+320x240+bn",  # trailing zero; the default FC width spelt out
    " resnet18@.25+none+rpn+cascade3+320x240+bn\n",  # no leading zero; surrounding white space
])
def test_spellings_of_one_spec_share_its_hash_once_parsed(variant):
    canonical = "resnet18@0.25+none+rpn+cascade3+320x240+bn"
    assert variant != canonical
    assert str(parse_spec(variant)) == canonical
    assert spec_hash(parse_spec(variant)) == spec_hash(canonical)


@pytest.mark.parametrize("text, match", [
    ("resnet50+fpn:P2-P5:c128+rpn+cascade3+800x600", "expected 6"),
    ("resnet51+none+rpn+2fc+800x600+bn", "unknown backbone 'resnet51'.*resnet18"),
    ("resnet50+fpn:P5-P6:c128+rpn+2fc+800x600+bn", "must start at a backbone level"),
    ("resnet50+fpn:P3-P2:c128+rpn+2fc+800x600+bn", "first <= last"),
    ("resnet50+fpn:P2-P7:c128+rpn+2fc+800x600+bn", "end by P6"),
    ("resnet50+bifpn+rpn+2fc+800x600+bn", "neck 'bifpn'"),
    ("resnet50+none+rpn+retina+800x600+bn", "retina is one-stage and takes no RPN"),
    ("resnet50+none+none+2fc+800x600+bn", "two-stage and needs an RPN"),
    ("resnet50+none+rpn+cascade5+800x600+bn", "cascade5: stages must be one of"),
    ("resnet50+none+rpn+3fc+800x600+bn", "head '3fc'"),
    ("resnet50+none+carpn+2fc+800x600+bn", "unknown RPN 'carpn'.*garpn"),
    ("resnet50+none+rpn+2fc+800by600+bn", "input size '800by600'"),
    ("resnet50+none+rpn+2fc+800x600+ln", "unknown norm 'ln'"),
    ("resnet50@x+none+rpn+2fc+800x600+bn", "width multiplier 'x'"),
    ("basicblock_64_1-2a+none+rpn+2fc+800x600+bn", "character 'a'"),
    ("basicblock_64_1-21-21-12@0.5+none+rpn+2fc+800x600+bn", "width multiplier applies to named"),
])
def test_bad_specs_name_the_part(text, match):
    with pytest.raises(SpecError, match=match):
        parse_spec(text)


def test_paper_space_size_and_validity():
    space = load_space(PAPER)
    # 7 backbones x (1 + 18 FPN ranges x 2 channel counts) necks x 9 RPN/head pairs x 4 sizes
    assert space.size() == 7 * 37 * 9 * 4 == 9324
    specs_ = list(space)
    assert len(specs_) == len(set(map(str, specs_))) == 9324


def test_laptop_space_samples_are_distinct_valid_and_seeded():
    space = StageOneSpace()
    assert space.size() == 7 * 4 * 9 * 4
    a, b, c = space.sample(20, seed=1), space.sample(20, seed=1), space.sample(20, seed=2)
    assert a == b and a != c and len(set(a)) == 20
    for s in a:
        assert parse_spec(str(s)) == s


def test_space_only_yields_valid_rpn_head_pairs():
    pairs = {(rpn.kind, str(head)) for _, _, rpn, head in StageOneSpace().modules()}
    assert ("none", "retina") in pairs and ("garpn", "cascade4:256") in pairs
    assert not any(r == "none" and h != "retina" for r, h in pairs)
    assert not any(r != "none" and h == "retina" for r, h in pairs)


def test_with_norm_switches_gnws_to_bn():
    s = parse_spec("resnet18@0.25+fpn:P1-P4:c32+rpn+2fc:256+320x240+gnws")
    assert str(s.with_norm("bn")) == "resnet18@0.25+fpn:P1-P4:c32+rpn+2fc:256+320x240+bn"
