#!/bin/sh
# Runs inside LocalStack once it is ready: the bucket evsync's example config uses.
awslocal s3 mb s3://evsync || true
