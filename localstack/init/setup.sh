#!/bin/sh
# Create what evsync needs on LocalStack: the bucket, S3 -> SNS -> one SQS queue per
# instance. Idempotent: run it again at any time (after a LocalStack restart, or with
# more INSTANCES) and it converges on the same state.
#
# Inside the LocalStack container (mounted into /etc/localstack/init/ready.d) it uses
# `awslocal`; on the host it uses `aws --endpoint-url "$AWS_ENDPOINT_URL"`.
#
# Environment:
#   BUCKET            bucket name                      (default evsync)
#   TOPIC             SNS topic name                   (default evsync-events)
#   INSTANCES         evsync instances, one queue each (default "one two")
#   AWS_ENDPOINT_URL  LocalStack endpoint when awslocal is absent (default http://127.0.0.1:4566)
#   AWS_DEFAULT_REGION                                 (default us-east-1)
set -eu

BUCKET=${BUCKET:-evsync}
TOPIC=${TOPIC:-evsync-events}
INSTANCES=${INSTANCES:-one two}
: "${AWS_DEFAULT_REGION:=us-east-1}"
: "${AWS_ACCESS_KEY_ID:=test}"
: "${AWS_SECRET_ACCESS_KEY:=test}"
export AWS_DEFAULT_REGION AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
export AWS_PAGER=""

if command -v awslocal >/dev/null 2>&1; then
    aws_() { awslocal "$@"; }
else
    : "${AWS_ENDPOINT_URL:=http://127.0.0.1:4566}"
    export AWS_ENDPOINT_URL
    aws_() { aws --endpoint-url "$AWS_ENDPOINT_URL" "$@"; }
fi

say() { printf 'evsync setup: %s\n' "$*" >&2; }

# A policy document as the string value of a JSON attribute map: {"Policy": "<escaped>"}.
policy_attribute() {
    escaped=$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')
    printf '{"Policy":"%s"}' "$escaped"
}

# --- bucket
if aws_ s3api head-bucket --bucket "$BUCKET" >/dev/null 2>&1; then
    say "bucket $BUCKET exists"
else
    aws_ s3api create-bucket --bucket "$BUCKET" >/dev/null
    say "bucket $BUCKET created"
fi

# --- SNS topic (create-topic returns the existing ARN when it exists)
TOPIC_ARN=$(aws_ sns create-topic --name "$TOPIC" --query TopicArn --output text)
ACCOUNT=$(printf '%s' "$TOPIC_ARN" | cut -d: -f5)
say "topic $TOPIC_ARN"

# The topic policy: S3 (this bucket, this account) may publish to the topic.
TOPIC_POLICY=$(cat <<EOF
{"Version":"2012-10-17","Statement":[{"Sid":"AllowS3BucketNotifications","Effect":"Allow","Principal":{"Service":"s3.amazonaws.com"},"Action":"SNS:Publish","Resource":"$TOPIC_ARN","Condition":{"ArnLike":{"aws:SourceArn":"arn:aws:s3:::$BUCKET"},"StringEquals":{"aws:SourceAccount":"$ACCOUNT"}}}]}
EOF
)
aws_ sns set-topic-attributes --topic-arn "$TOPIC_ARN" \
    --attribute-name Policy --attribute-value "$TOPIC_POLICY"

# --- one queue per instance, subscribed to the topic
QUEUE_URLS=""
for inst in $INSTANCES; do
    queue="evsync-$inst"
    url=$(aws_ sqs create-queue --queue-name "$queue" --query QueueUrl --output text)
    arn=$(aws_ sqs get-queue-attributes --queue-url "$url" \
        --attribute-names QueueArn --query Attributes.QueueArn --output text)
    # The queue policy: the topic (and nothing else) may send to this queue.
    queue_policy=$(cat <<EOF
{"Version":"2012-10-17","Statement":[{"Sid":"AllowEvsyncTopic","Effect":"Allow","Principal":{"Service":"sns.amazonaws.com"},"Action":"sqs:SendMessage","Resource":"$arn","Condition":{"ArnEquals":{"aws:SourceArn":"$TOPIC_ARN"}}}]}
EOF
)
    aws_ sqs set-queue-attributes --queue-url "$url" \
        --attributes "$(policy_attribute "$queue_policy")"
    # S3 events are up to 64 KB; keep the SQS maximum (256 KB) so none is dropped.
    aws_ sqs set-queue-attributes --queue-url "$url" \
        --attributes MaximumMessageSize=262144,MessageRetentionPeriod=86400
    # subscribe is idempotent for the same (topic, endpoint); RawMessageDelivery stays
    # false so evsync receives (and unwraps) the SNS envelope, as on AWS by default.
    sub=$(aws_ sns subscribe --topic-arn "$TOPIC_ARN" --protocol sqs \
        --notification-endpoint "$arn" --query SubscriptionArn --output text)
    aws_ sns set-subscription-attributes --subscription-arn "$sub" \
        --attribute-name RawMessageDelivery --attribute-value false
    say "queue $queue subscribed ($sub)"
    QUEUE_URLS="$QUEUE_URLS
  $inst: $url"
done

# --- bucket notifications: every created object is published to the topic
aws_ s3api put-bucket-notification-configuration --bucket "$BUCKET" \
    --notification-configuration "$(cat <<EOF
{"TopicConfigurations":[{"Id":"evsync-object-created","TopicArn":"$TOPIC_ARN","Events":["s3:ObjectCreated:*"]}]}
EOF
)"
say "bucket $BUCKET notifies $TOPIC_ARN on s3:ObjectCreated:*"

printf 'bucket: %s\ntopic: %s\nqueue URLs (notify.sqs.queue_url):%s\n' \
    "$BUCKET" "$TOPIC_ARN" "$QUEUE_URLS"
