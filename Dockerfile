# The one image of a deployment: the pinned Airflow image, the pinned set of constraints.txt and
# the recsys package with its DAGs, plugins and SQL. Every Airflow service of docker-compose.yaml
# (and the storefront API) is built from it; tests/test_compose.py checks both files agree.
FROM apache/airflow:3.3.2-python3.11

ENV OPENBLAS_NUM_THREADS=1 \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/recsys/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/recsys/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=false \
    RECSYS_DAGS_FOLDER=/opt/recsys/dags \
    RECSYS_SQL_DIR=/opt/recsys/sql \
    RECSYS_HOME=/opt/recsys/var

USER airflow
WORKDIR /opt/recsys
# The dependencies first, in their own layer: a code change does not reinstall them.
COPY --chown=airflow:0 constraints.txt pyproject.toml ./
COPY --chown=airflow:0 recsys/__init__.py recsys/__init__.py
RUN pip install --no-cache-dir -c constraints.txt "apache-airflow==${AIRFLOW_VERSION}" . \
    && pip uninstall --yes recsys
COPY --chown=airflow:0 recsys recsys
COPY --chown=airflow:0 sql sql
COPY --chown=airflow:0 dags dags
COPY --chown=airflow:0 plugins plugins
RUN pip install --no-cache-dir --no-deps -c constraints.txt . \
    && python -c "import recsys.stages.train, recsys.serving.api"
