"""A concept named in the review app reaches the reward and finetuning stages (real SQLite file)."""

from __future__ import annotations

import json
import uuid

from fastapi.testclient import TestClient
from review_helpers import bearer, make_study

from clinalign.concepts.assign import assign
from clinalign.data.classmap import ClassMap
from clinalign.data.concepts import CONCEPTS_FILE, read_concepts_file
from clinalign.data.folder import ImageFolderDataset
from clinalign.review.app import create_app
from clinalign.review.db import Store
from clinalign.review.export import export_feedback
from clinalign.reward.data import load_reward_data


def test_a_concept_picked_in_the_review_app_round_trips_to_reward_and_finetune_inputs(sqlite_url, tmp_path):
    store = Store(sqlite_url)
    try:
        study = make_study(store, tmp_path, n=4, per_image=1, reviewers=("alice",))
        with TestClient(create_app(store.url, store=store)) as client:
            admin = bearer(study.admin_token)
            for name in ("neutrophil-band", "neutrophil-segmented"):  # the admin adds concepts to the batch
                r = client.post(
                    "/api/admin/concepts", json={"batch": "b1", "name": name, "parent": "neutrophil"}, headers=admin
                )
                assert r.status_code == 201, r.text
            token = study.tokens["alice"]
            data = client.get("/api/next", headers=bearer(token)).json()
            picked = {}
            k = 0
            while data["item"]:
                item = data["item"]
                extra = {}
                if item["declared_class"] == "neutrophil":  # the concept picker on the reviewer's page
                    assert {c["name"] for c in item["concepts"]} == {"neutrophil-band", "neutrophil-segmented"}
                    concept = ("neutrophil-band", "neutrophil-segmented", None)[k % 3]
                    k += 1
                    if concept:
                        extra["concept"] = concept
                        picked[item["uid"]] = concept
                r = client.post(
                    "/api/verdicts",
                    json={"request_id": str(uuid.uuid4()), "item": item["uid"], "verdict": "plausible", **extra},
                    headers=bearer(token),
                )
                assert r.status_code == 200, r.text
                data = {"item": r.json()["next"]}
        assert sorted(picked.values()) == ["neutrophil-band", "neutrophil-band", "neutrophil-segmented"]

        fb = tmp_path / "feedback"
        export_feedback(store, fb, rule="majority")
    finally:
        store.dispose()

    # The export records each concept's parent beside the concept folders.
    assert read_concepts_file(fb) == {"neutrophil-band": "neutrophil", "neutrophil-segmented": "neutrophil"}
    assert len(list((fb / "neutrophil-band" / "align").glob("*.png"))) == 2
    assert len(list((fb / "neutrophil" / "align").glob("*.png"))) == 1
    assert json.loads((fb / CONCEPTS_FILE).read_text())

    # Reward stage: Γ(x, concept) is trained like any class, the parent recorded.
    data = load_reward_data(study.reference, fb, image_size=32)
    assert data.class_map.parents["neutrophil-segmented"] == "neutrophil"
    assert sorted(data.class_map.name(int(c)) for c in data.train_feedback.classes).count("neutrophil-band") == 2

    # Finetune stage: the sample folder declared with the concepts, readable with the grown map.
    out = assign(study.samples, fb, tmp_path / "assigned", ["neutrophil", "lymphocyte"]).out
    grown = (
        ClassMap(["lymphocyte", "neutrophil"])
        .grow("neutrophil-band", "neutrophil")
        .grow("neutrophil-segmented", "neutrophil")
    )
    ds = ImageFolderDataset(out, 32, class_map=grown)
    declared = sorted(grown.names[y] for y in ds.labels)
    assert declared == ["lymphocyte"] * 4 + ["neutrophil"] + ["neutrophil-band"] * 2 + ["neutrophil-segmented"]
