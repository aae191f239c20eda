#!/bin/bash
# alternated interrupt-only runs: base (main before respconn) and resp, N samples, P pairs
N=$1; P=$2; OUT=$3
for i in $(seq 1 $P); do
  for label in base resp; do
    if [ $(( i % 2 )) -eq 0 ]; then label=$([ $label = base ] && echo resp || echo base); fi
    if [ $label = base ]; then PP=/tmp/resp-base/services; else PP=/tmp/resp-new/services; fi
    echo "pair $i $label load $(cut -d' ' -f1-3 /proc/loadavg)" >> $OUT
    PYTHONPATH=$PP timeout 900 /work/venv/bin/python /tmp/resp-runs/drive.py $N $label >> $OUT 2>>$OUT.err
  done
done
