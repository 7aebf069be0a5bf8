"""Grounded answers and the way to a person on the real default model in a real `tandem serve`,
with the invented shop's documents added by `tandem knowledge add` as an operator would: a
paraphrased question gets the documents' fact (the passage's own words where the model's do not
state it) and its source; a question the documents do not answer gets the honest reply offering a
person, not an invention; asking for a person in words queues the conversation for the staff."""

from __future__ import annotations

import pytest

from dialog.bench_support import DATA
from dialog.locales import strings
from tests.dialog.test_dialog_cli import tandem
from tests.dialog_client import Chat

pytestmark = pytest.mark.default_model


@pytest.fixture(scope="module")
def shop(default_server) -> str:  # type: ignore[no-untyped-def]
    d = ["--dialog-dir", str(default_server.dialog_dir)]
    added = tandem(
        "sites", "add", "larkspur", "--origin", default_server.url, "--system-prompt", "You help Larkspur & Finch's customers.", *d
    )
    assert added.returncode == 0, added.stderr
    loaded = tandem("knowledge", "add", "larkspur", str(DATA / "docs"), *d)
    assert loaded.returncode == 0 and "6 documents" in loaded.stdout, loaded.stderr
    return "larkspur"


def test_a_paraphrased_question_gets_the_documents_fact_and_its_source(default_server, shop: str) -> None:
    with Chat(default_server.url, site=shop) as chat:
        answer, frames = chat.ask("once you get my parcel back, how quickly will I see the money?")
    assert "6 working days" in answer
    assert frames[-1]["finish_reason"] in ("stop", "length")
    assert "docs/returns-and-refunds.md" in {s["source"] for s in frames[-1]["sources"]}  # (named as added: the folder, then the file)


def test_a_question_the_documents_cannot_answer_gets_the_honest_reply(default_server, shop: str) -> None:
    with Chat(default_server.url, site=shop) as chat:
        answer, frames = chat.ask("do you sell skis or snowboards")
    assert answer == strings("en")["no_answer"] and "sources" not in frames[-1]


def test_asking_for_a_person_in_words_queues_the_conversation(default_server, shop: str) -> None:
    with Chat(default_server.url, site=shop) as chat:
        chat.say("Can I talk to a person please?")
        status = next(f for f in iter(lambda: chat.recv(60), None) if f["type"] == "status")
    assert status["status"] == "waiting"
