"""A stand-in for the VASP binary, run by a job's run.sh inside the job folder.

It does what a real run leaves behind by copying one of the real VASP outputs
from `$FAKE_VASP_DATA` (../shared/data/vasp_outputs) into the folder. What each
attempt of each job does comes from the JSON plan at `$FAKE_VASP_PLAN`
(`{job_id: [behaviour of attempt 1, of attempt 2, ...]}`, default a good Si run):
the name of an output folder to copy, "crash" (no output, exit status 1) or
"truncated" (a vasprun.xml cut off mid-file, exit status 137 as when killed).
"""

import json
import os
import shutil
import sys
from pathlib import Path

DEFAULT = "Si_mprelaxset_atomate"


def main() -> int:
    job = json.loads(Path("job.json").read_text())
    plan_file = os.environ.get("FAKE_VASP_PLAN")
    plan = json.loads(Path(plan_file).read_text()) if plan_file and Path(plan_file).exists() else {}
    steps = plan.get(job["job_id"], [DEFAULT])
    behaviour = steps[min(job["attempt"], len(steps)) - 1]
    print(f"fake VASP: job {job['job_id']} attempt {job['attempt']}: {behaviour}")
    if behaviour == "crash":
        print("forrtl: severe (174): SIGSEGV, segmentation fault occurred", file=sys.stderr)
        return 1
    source = Path(os.environ["FAKE_VASP_DATA"]) / ("truncated_vasprun" if behaviour == "truncated" else behaviour)
    for path in source.iterdir():
        if not path.name.startswith(("INCAR", "POSCAR", "KPOINTS")):  # keep the inputs the engine wrote
            shutil.copy(path, path.name)
    return 137 if behaviour == "truncated" else 0


if __name__ == "__main__":
    sys.exit(main())
