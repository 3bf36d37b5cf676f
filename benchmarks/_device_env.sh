# Sourced by the scripts run on a GPU machine without network access (gpu_check.sh, gpu_grid.sh,
# gpu_searchers.sh), from the repository root: the packages that machine lacks, carried as
# wheels in .whl/, installed into /tmp/site, and the checkout put on the path. Python's output
# unbuffered, and `taskset` a no-op where it is missing.
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
command -v taskset > /dev/null || taskset() { shift 2; "$@"; }
