"""The shop's web service: a CRUD API over items kept in Redis (the image
iad.ocir.io/<tenancy>/shop/flask-crud is built from this directory's Containerfile)."""
import json
import os
import uuid

import redis
from flask import Flask, abort, jsonify, request

app = Flask(__name__)
store = redis.Redis(host=os.environ["REDIS_HOST"], port=int(os.environ.get("REDIS_PORT", "6379")),
                    decode_responses=True)


@app.get("/healthz")
def healthz():
    store.ping()
    return "ok"


@app.get("/items")
def list_items():
    return jsonify({k: json.loads(v) for k, v in store.hgetall("items").items()})


@app.post("/items")
def create_item():
    item_id = uuid.uuid4().hex
    store.hset("items", item_id, json.dumps(request.get_json(force=True)))
    return jsonify({"id": item_id}), 201


@app.get("/items/<item_id>")
def get_item(item_id):
    value = store.hget("items", item_id) or abort(404)
    return jsonify(json.loads(value))


@app.put("/items/<item_id>")
def update_item(item_id):
    if not store.hexists("items", item_id):
        abort(404)
    store.hset("items", item_id, json.dumps(request.get_json(force=True)))
    return jsonify({"id": item_id})


@app.delete("/items/<item_id>")
def delete_item(item_id):
    store.hdel("items", item_id) or abort(404)
    return "", 204


@app.get("/")
def index():
    return os.environ.get("GREETING", "hello")
