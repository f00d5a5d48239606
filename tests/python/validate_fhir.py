"""Validates a FHIR Bulk Data export (a directory of `<ResourceType>.ndjson` files)
with the `fhir.resources` package, independently of Circle's own types.

fhir.resources 8.x models R5 at its top level and R4B (4.3.0) in `fhir.resources.R4B`;
the last release with R4 (4.0.1) at its top level, 6.5.0, needs pydantic 1, which
cannot share an interpreter with the pydantic 2 the other test tools need. R4B is
R4 with errata and new medication-definition resources: the eight resources Circle
exports are defined alike in both, so R4B's models check them as R4.

Besides parsing, every code the export writes for PHQ-9 and GAD-7 is checked
against a fixed table (LOINC, checked at loinc.org; pinned again in Rust by
`projections/src/fhir/tests.rs`).

Usage: python3 validate_fhir.py DIR   (prints "<n> resources valid", exit 0)
"""

import json
import pathlib
import sys

from fhir.resources.R4B import get_fhir_model_class

LOINC = "http://loinc.org"
PHQ9_ITEMS = ["44250-9", "44255-8", "44259-0", "44254-1", "44251-7",
              "44258-2", "44252-5", "44253-3", "44260-8"]
GAD7_ITEMS = ["69725-0", "68509-9", "69733-4", "69734-2", "69735-9", "69689-8", "69736-7"]
QUESTIONNAIRES = {
    "http://loinc.org/q/44249-1": PHQ9_ITEMS,  # PHQ-9 panel
    "http://loinc.org/q/69737-5": GAD7_ITEMS,  # GAD-7 panel
}
LL358_3 = {"LA6568-5": "Not at all", "LA6569-3": "Several days",
           "LA6570-1": "More than half the days", "LA6571-9": "Nearly every day"}
# PHQ-9 total, GAD-7 total, PHQ-9 item 9, the PHQ-9 and GAD-7 panels.
OBSERVATION_CODES = {"44261-6", "70274-6", "44260-8", "44249-1", "69737-5"}
# The R4 value sets of required bindings the export fills: fhir.resources checks
# types and structure, not codes.
REQUIRED = {
    ("Observation", "status"): {"registered", "preliminary", "final", "amended", "corrected",
                                "cancelled", "entered-in-error", "unknown"},
    ("Encounter", "status"): {"planned", "arrived", "triaged", "in-progress", "onleave",
                              "finished", "cancelled", "entered-in-error", "unknown"},
    ("QuestionnaireResponse", "status"): {"in-progress", "completed", "amended",
                                          "entered-in-error", "stopped"},
    ("Consent", "status"): {"draft", "proposed", "active", "rejected", "inactive",
                            "entered-in-error"},
    ("CareTeam", "status"): {"proposed", "active", "suspended", "inactive", "entered-in-error"},
    ("Group", "type"): {"person", "animal", "practitioner", "device", "medication", "substance"},
}


def check_codes(resource, where, errors):
    kind = resource["resourceType"]
    for (of, element), allowed in REQUIRED.items():
        if of == kind and resource.get(element) not in allowed:
            errors.append(f"{where}: {element} {resource.get(element)!r} is not in its value set")
    if kind == "Consent" and resource["provision"]["type"] not in {"deny", "permit"}:
        errors.append(f"{where}: provision.type is not deny or permit")
    if kind == "QuestionnaireResponse" and resource["questionnaire"] in QUESTIONNAIRES:
        items = QUESTIONNAIRES[resource["questionnaire"]]
        link_ids = [item["linkId"] for item in resource["item"]]
        if link_ids != items:
            errors.append(f"{where}: linkIds {link_ids} are not {items}")
        for item in resource["item"]:
            for answer in item["answer"]:
                coding = answer.get("valueCoding")
                if coding is None or coding["system"] != LOINC or LL358_3.get(coding["code"]) != coding.get("display"):
                    errors.append(f"{where}: answer {answer} is not from LL358-3")
    if kind == "Observation":
        for coding in resource["code"]["coding"]:
            if coding["system"] == LOINC and coding["code"] not in OBSERVATION_CODES:
                errors.append(f"{where}: Observation code {coding['code']} is not in the table")
        categories = [c["code"] for cc in resource["category"] for c in cc["coding"]]
        if categories != ["survey"]:
            errors.append(f"{where}: category {categories} is not survey")
        if not resource.get("derivedFrom"):
            errors.append(f"{where}: no derivedFrom")


def main(directory):
    errors = []
    count = 0
    files = sorted(pathlib.Path(directory).glob("*.ndjson"))
    if not files:
        errors.append(f"no .ndjson files in {directory}")
    for path in files:
        model = get_fhir_model_class(path.stem)
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            where = f"{path.name}:{number}"
            resource = json.loads(line)
            if resource.get("resourceType") != path.stem:
                errors.append(f"{where}: a {resource.get('resourceType')} in the {path.stem} file")
                continue
            try:
                model.model_validate(resource)
            except Exception as error:  # the package's validation error, reported whole
                errors.append(f"{where}: {error}")
                continue
            check_codes(resource, where, errors)
            count += 1
    for error in errors:
        print(error)
    if errors:
        sys.exit(1)
    print(f"{count} resources valid")


if __name__ == "__main__":
    main(sys.argv[1])
