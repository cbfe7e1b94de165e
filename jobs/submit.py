"""The spark-submit entry point: one file that runs any job from the packaged code.

    spark-submit [spark options] --py-files dist/ipsynergy.zip dist/submit.py JOB [job options]

JOB and its options are those of the ``ipsynergy`` command (``ipsynergy --help``), e.g.
``pipeline --env cluster --set lake.root=hdfs:///ipsynergy/lake``. `make package` copies this
file to dist/; see docs/cluster.md.
"""
import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main())
