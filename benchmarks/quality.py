"""Quality and TTFT of every selector vs full attention: a thin wrapper over `fusionrag bench quality`.

python benchmarks/quality.py --data ../shared/data/musique_dev.json --limit 20 --ratios 0.15 --out DIR
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fusionrag_integrations.evaluation.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
