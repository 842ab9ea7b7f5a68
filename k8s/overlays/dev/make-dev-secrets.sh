#!/bin/sh
# Write the dev overlay's secrets/*.env with fresh random credentials that agree with each other
# (the MLflow server's database URI carries the postgres password; MinIO's keys serve MLflow and the
# pipeline's s3:// inputs). Existing files are kept unless you pass --force. Dev only.
set -eu
cd "$(dirname "$0")/secrets"

force=no
[ "${1:-}" = "--force" ] && force=yes
for f in mlflow-server postgres minio domaintune-mlflow domaintune-s3; do
    if [ -e "$f.env" ] && [ "$force" = no ]; then
        echo "secrets/$f.env exists; nothing written (use --force to replace all)" >&2
        exit 1
    fi
done

rand() {  # hex: URL-safe, so it can sit in the database URI unescaped
    if command -v openssl >/dev/null 2>&1; then openssl rand -hex "$1"
    else python3 -c "import secrets, sys; print(secrets.token_hex(int(sys.argv[1])))" "$1"; fi
}

umask 077
pg_password=$(rand 24)
minio_user=mlflow-$(rand 4)
minio_password=$(rand 24)

cat > postgres.env <<EOT
POSTGRES_USER=mlflow
POSTGRES_DB=mlflow
POSTGRES_PASSWORD=$pg_password
EOT
cat > minio.env <<EOT
MINIO_ROOT_USER=$minio_user
MINIO_ROOT_PASSWORD=$minio_password
EOT
cat > mlflow-server.env <<EOT
MLFLOW_BACKEND_STORE_URI=postgresql+psycopg2://mlflow:$pg_password@postgres.domaintune.svc.cluster.local:5432/mlflow
AWS_ACCESS_KEY_ID=$minio_user
AWS_SECRET_ACCESS_KEY=$minio_password
EOT
cat > domaintune-mlflow.env <<EOT
MLFLOW_TRACKING_URI=http://mlflow.domaintune.svc.cluster.local:5000
MLFLOW_TRACKING_USERNAME=
MLFLOW_TRACKING_PASSWORD=
EOT
cat > domaintune-s3.env <<EOT
AWS_ACCESS_KEY_ID=$minio_user
AWS_SECRET_ACCESS_KEY=$minio_password
AWS_ENDPOINT_URL=http://minio.domaintune.svc.cluster.local:9000
EOT
echo "wrote $(pwd)/{postgres,minio,mlflow-server,domaintune-mlflow,domaintune-s3}.env"
