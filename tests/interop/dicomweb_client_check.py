"""Drives a running Tessera with the dicomweb-client package (PyPI), as a real client would.

Usage: python dicomweb_client_check.py BASE_URL TESTDATA_DIR [BEARER_TOKEN]
With a token, every request carries `Authorization: Bearer TOKEN`. Stores sample files, searches at each level (wildcard, fuzzy, date range), retrieves an instance
and its metadata, and exits non-zero on the first mismatch.
"""
import os
import sys

import pydicom
from dicomweb_client.api import DICOMwebClient


def check(condition, message):
    if not condition:
        print(f"FAILED: {message}")
        sys.exit(1)


def main():
    url, data = sys.argv[1], sys.argv[2]
    token = sys.argv[3] if len(sys.argv) > 3 else None
    headers = {"Authorization": f"Bearer {token}"} if token else None
    client = DICOMwebClient(url=url, headers=headers)
    names = ["blue-circle.dcm", "green-square.dcm", "red-triangle.dcm", "layer1.dcm"]
    datasets = [pydicom.dcmread(os.path.join(data, name)) for name in names]
    client.store_instances(datasets=datasets)
    blue = datasets[0]
    study, series, sop = blue.StudyInstanceUID, blue.SeriesInstanceUID, blue.SOPInstanceUID

    studies = client.search_for_studies(search_filters={"PatientID": blue.PatientID})
    check(any(s["0020000D"]["Value"][0] == study for s in studies), "study by PatientID")
    name = str(blue.PatientName)
    wildcard = client.search_for_studies(search_filters={"PatientName": name[:3] + "*"})
    check(any(s["0020000D"]["Value"][0] == study for s in wildcard), f"study by wildcard {name[:3]}*")
    fuzzy = client.search_for_studies(fuzzymatching=True, search_filters={"PatientName": name[:2].lower()})
    check(any(s["0020000D"]["Value"][0] == study for s in fuzzy), "study by fuzzy name")
    date = blue.StudyDate
    ranged = client.search_for_studies(search_filters={"StudyDate": f"{date}-{date}"})
    check(any(s["0020000D"]["Value"][0] == study for s in ranged), "study by date range")
    found_series = client.search_for_series(study_instance_uid=study)
    check(len(found_series) == 2, f"two series in the study, got {len(found_series)}")
    instances = client.search_for_instances(study_instance_uid=study, series_instance_uid=series)
    check(any(i["00080018"]["Value"][0] == sop for i in instances), "instance in its series")
    everything = client.search_for_instances()
    check(len(everything) == len(names), f"{len(names)} instances, got {len(everything)}")

    retrieved = client.retrieve_instance(study, series, sop)
    check(retrieved.SOPInstanceUID == sop, "retrieved SOP Instance UID")
    check(retrieved.PixelData == blue.PixelData, "retrieved pixel data")
    metadata = client.retrieve_instance_metadata(study, series, sop)
    check(metadata["00080018"]["Value"][0] == sop, "metadata SOP Instance UID")
    check("7FE00010" not in metadata, "no pixel data in metadata")
    print("interop ok")


if __name__ == "__main__":
    main()
