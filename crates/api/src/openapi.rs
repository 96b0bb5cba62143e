//! `/openapi.json`: an OpenAPI 3 description of every route the API serves, built from the
//! same table the router is built from, so the two cannot drift apart.

use serde_json::{json, Map, Value};

/// (method, path, summary) of every operation.
pub const OPERATIONS: &[(&str, &str, &str)] = &[
    (
        "get",
        "/apis/serving.knative.dev/v1/namespaces/{namespace}/services",
        "List services, by name (labelSelector: any Kubernetes label selector; limit=N: a page, with metadata.continue to pass back as continue for the next; fields=MASK or the X-Goog-FieldMask header: only the fields named, as Google's partial responses)",
    ),
    (
        "post",
        "/apis/serving.knative.dev/v1/namespaces/{namespace}/services",
        "Create a service",
    ),
    (
        "get",
        "/apis/serving.knative.dev/v1/namespaces/{namespace}/services/{name}",
        "Get a service",
    ),
    (
        "put",
        "/apis/serving.knative.dev/v1/namespaces/{namespace}/services/{name}",
        "Replace a service",
    ),
    (
        "delete",
        "/apis/serving.knative.dev/v1/namespaces/{namespace}/services/{name}",
        "Delete a service",
    ),
    (
        "get",
        "/apis/serving.knative.dev/v1/namespaces/{namespace}/revisions",
        "List revisions (labelSelector: any Kubernetes label selector)",
    ),
    (
        "get",
        "/apis/serving.knative.dev/v1/namespaces/{namespace}/configurations",
        "List configurations, one per service (labelSelector: any Kubernetes label selector)",
    ),
    (
        "get",
        "/apis/serving.knative.dev/v1/namespaces/{namespace}/configurations/{name}",
        "Get a service's configuration",
    ),
    (
        "get",
        "/apis/serving.knative.dev/v1/namespaces/{namespace}/routes",
        "List routes, one per service (labelSelector: any Kubernetes label selector)",
    ),
    (
        "get",
        "/apis/serving.knative.dev/v1/namespaces/{namespace}/routes/{name}",
        "Get a service's route",
    ),
    (
        "get",
        "/apis/serving.knative.dev/v1/namespaces/{namespace}/revisions/{name}",
        "Get a revision",
    ),
    (
        "delete",
        "/apis/serving.knative.dev/v1/namespaces/{namespace}/revisions/{name}",
        "Delete a revision",
    ),
    (
        "get",
        "/v1/projects/{project}",
        "Get a project (Resource Manager v1: its id and a stable number)",
    ),
    (
        "get",
        "/v1/projects/{project}/locations",
        "List regions (Cloud Run v1 ListLocations: Skiff's one region)",
    ),
    (
        "post",
        "/v2/entries:list",
        "List log entries (Cloud Logging v2: resourceNames, filter, orderBy, pageSize, pageToken)",
    ),
    (
        "get",
        "/v1/projects/{project}/locations/{location}/services",
        "List a project's services (location `-`: every region, as gcloud asks without one)",
    ),
    (
        "get",
        "/v1/projects/{project}/locations/{location}/services/{service}:getIamPolicy",
        "Get a service's IAM policy",
    ),
    (
        "post",
        "/v1/projects/{project}/locations/{location}/services/{service}:setIamPolicy",
        "Set a service's IAM policy",
    ),
    (
        "post",
        "/v1/projects/{project}/locations/{location}/services/{service}:testIamPermissions",
        "Test IAM permissions",
    ),
    ("get", "/apis/run.googleapis.com/v1/namespaces/{namespace}/jobs", "List jobs (labelSelector: any Kubernetes label selector)"),
    ("post", "/apis/run.googleapis.com/v1/namespaces/{namespace}/jobs", "Create a job"),
    ("get", "/apis/run.googleapis.com/v1/namespaces/{namespace}/jobs/{name}", "Get a job"),
    ("put", "/apis/run.googleapis.com/v1/namespaces/{namespace}/jobs/{name}", "Replace a job"),
    ("delete", "/apis/run.googleapis.com/v1/namespaces/{namespace}/jobs/{name}", "Delete a job with its executions"),
    ("post", "/apis/run.googleapis.com/v1/namespaces/{namespace}/jobs/{name}:run", "Start an execution (body: overrides)"),
    ("get", "/apis/run.googleapis.com/v1/namespaces/{namespace}/executions", "List executions (labelSelector: any Kubernetes label selector)"),
    ("get", "/apis/run.googleapis.com/v1/namespaces/{namespace}/executions/{name}", "Get an execution"),
    ("delete", "/apis/run.googleapis.com/v1/namespaces/{namespace}/executions/{name}", "Delete a finished execution"),
    ("post", "/apis/run.googleapis.com/v1/namespaces/{namespace}/executions/{name}:cancel", "Cancel an execution"),
    ("get", "/apis/run.googleapis.com/v1/namespaces/{namespace}/tasks", "List tasks (labelSelector: any Kubernetes label selector)"),
    ("get", "/apis/run.googleapis.com/v1/namespaces/{namespace}/tasks/{name}", "Get a task"),
    ("get", "/v1/projects/{project}/locations/{location}/jobs", "List scheduler jobs"),
    ("post", "/v1/projects/{project}/locations/{location}/jobs", "Create a scheduler job"),
    ("get", "/v1/projects/{project}/locations/{location}/jobs/{name}", "Get a scheduler job (or a Cloud Run job's IAM policy: {name} JOB:getIamPolicy)"),
    ("patch", "/v1/projects/{project}/locations/{location}/jobs/{name}", "Update a scheduler job"),
    ("delete", "/v1/projects/{project}/locations/{location}/jobs/{name}", "Delete a scheduler job"),
    ("post", "/v1/projects/{project}/locations/{location}/jobs/{name}:run", "Run a scheduler job now (also :pause, :resume; and a Cloud Run job's :getIamPolicy, :setIamPolicy, :testIamPermissions)"),
    (
        "post",
        "/skiff/v1/images:import",
        "Import an image archive (request body: the archive; ?name=NAME[:TAG])",
    ),
    ("get", "/skiff/v1/images", "List images"),
    (
        "post",
        "/skiff/v1/images:pull",
        "Pull an image from a registry into the store (body: {\"reference\": \"HOST[:PORT]/REPO[:TAG|@DIGEST]\"}); with Accept: application/x-ndjson, progress events one JSON object a line, ending with {\"event\":\"pulled\",...} or {\"event\":\"error\",...}",
    ),
    (
        "post",
        "/skiff/v1/images:prune",
        "Delete blobs and layers no image, revision or execution uses, and abandoned pushes; drop the build cache of deleted services, jobs and `builds submit --tag` images, and what is over `--build-cache-max` (buildCacheImages, buildCacheBytes, buildCacheDropped: the owners dropped over the limit)",
    ),
    ("get", "/skiff/v1/registries", "List registry settings (without passwords)"),
    (
        "put",
        "/skiff/v1/registries/{host}",
        "Log in to a registry: check and store its settings (body: username, password, insecure, caFile)",
    ),
    ("delete", "/skiff/v1/registries/{host}", "Forget a registry's settings"),
    (
        "delete",
        "/skiff/v1/images/{reference}",
        "Delete an image reference",
    ),
    (
        "get",
        "/skiff/v1/namespaces/{namespace}/instances",
        "List live instances (?service=S)",
    ),
    (
        "post",
        "/skiff/v1/namespaces/{namespace}/builds",
        "Build a source tar.gz (the body, at most `--build-max-source`, 512Mi by default, else 413) into an image (?service=S, ?job=J or ?image=NAME[:TAG], &buildArgs=K=V,...&baseImage=REF&timeout=DUR); answers with NDJSON: the build, its log lines, the build as it ended",
    ),
    (
        "get",
        "/skiff/v1/namespaces/{namespace}/builds",
        "List builds, newest first (?service=S or ?job=J)",
    ),
    (
        "get",
        "/skiff/v1/namespaces/{namespace}/builds/{id}",
        "Get a build",
    ),
    (
        "post",
        "/skiff/v1/namespaces/{namespace}/builds/{id}:cancel",
        "Cancel a queued or running build",
    ),
    (
        "get",
        "/skiff/v1/namespaces/{namespace}/builds/{id}/log",
        "A build's log (text)",
    ),
    (
        "get",
        "/skiff/v1/namespaces/{namespace}/logs",
        "Read container logs as JSON lines (?service=S or ?job=J[&execution=E], &limit=N&follow=true)",
    ),
    (
        "post",
        "/skiff/v1/identityToken",
        "Mint an identity token for private services ({\"audience\": URL, \"serviceAccount\": EMAIL to mint for a service account instead of the admin})",
    ),
    (
        "get",
        "/skiff/v1/namespaces/{namespace}/usage",
        "Usage and cost per service revision and job execution (?service=S or ?job=J, &since=T&until=T, RFC 3339)",
    ),
    (
        "get",
        "/v1/projects/{project}/secrets",
        "List secrets (Secret Manager v1)",
    ),
    (
        "post",
        "/v1/projects/{project}/secrets",
        "Create a secret (?secretId=NAME; body: labels, replication)",
    ),
    ("get", "/v1/projects/{project}/secrets/{secret}", "Get a secret"),
    (
        "delete",
        "/v1/projects/{project}/secrets/{secret}",
        "Delete a secret and all its versions",
    ),
    (
        "post",
        "/v1/projects/{project}/secrets/{secret}:addVersion",
        "Add a version (body: payload.data in base64, optional payload.dataCrc32c; at most 64 KiB)",
    ),
    (
        "get",
        "/v1/projects/{project}/secrets/{secret}/versions",
        "List a secret's versions, newest first",
    ),
    (
        "get",
        "/v1/projects/{project}/secrets/{secret}/versions/{version}",
        "Get a version (a number or latest)",
    ),
    (
        "get",
        "/v1/projects/{project}/secrets/{secret}/versions/{version}:access",
        "Access an enabled version's payload",
    ),
    (
        "post",
        "/v1/projects/{project}/secrets/{secret}/versions/{version}:enable",
        "Enable a version (also :disable, :destroy)",
    ),
    (
        "get",
        "/metrics",
        "Prometheus metrics (text exposition format)",
    ),
    (
        "get",
        "/apis/domains.cloudrun.com/v1/namespaces/{namespace}/domainmappings",
        "List domain mappings, each with its conditions and DNS records",
    ),
    (
        "post",
        "/apis/domains.cloudrun.com/v1/namespaces/{namespace}/domainmappings",
        "Map a domain to a service (spec.routeName; spec.forceOverride takes it over)",
    ),
    (
        "get",
        "/apis/domains.cloudrun.com/v1/namespaces/{namespace}/domainmappings/{domain}",
        "Get a domain mapping",
    ),
    (
        "delete",
        "/apis/domains.cloudrun.com/v1/namespaces/{namespace}/domainmappings/{domain}",
        "Delete a domain mapping",
    ),
    (
        "get",
        "/v1/projects/{project}/authorizeddomains",
        "Domains the admin may map: every domain (the DNS root)",
    ),
    (
        "get",
        "/v1/projects/{project}/locations/{location}/repositories/{repository}",
        "Get an Artifact Registry repository (gcloud's check for cloud-run-source-deploy)",
    ),
    (
        "post",
        "/v1/projects/{project}/locations/{location}/repositories",
        "Create a DOCKER repository (?repositoryId=R); answers with a done long-running operation",
    ),
    (
        "get",
        "/v1/projects/{project}/locations/{location}/operations/{operation}",
        "A long-running operation: a source build (Cloud Build: done once the build ended, response the Build or error why), a repository creation, an Eventarc trigger change",
    ),
    (
        "get",
        "/v1/projects/{project}/locations/{location}/defaultServiceAccount",
        "Cloud Build's default service account (the legacy NUMBER@cloudbuild.gserviceaccount.com)",
    ),
    (
        "post",
        "/v2/projects/{project}/locations/{location}/builds:submit",
        "Cloud Run v2 SubmitBuild: build a staged source object (storageSource) for the service or job its tags name; answers with the build's operation",
    ),
    (
        "get",
        "/storage/v1/b",
        "List the staging buckets of ?project=P (&prefix=X)",
    ),
    (
        "post",
        "/storage/v1/b",
        "Create a staging bucket (?project=P; body: name, location)",
    ),
    ("get", "/storage/v1/b/{bucket}", "Get a staging bucket"),
    (
        "get",
        "/storage/v1/b/{bucket}/o/{object}",
        "Get a staged object's metadata",
    ),
    (
        "post",
        "/upload/storage/v1/b/{bucket}/o",
        "Upload a source object (?uploadType=media|multipart&name=O, at most --build-max-source bytes); a bucket keeps its 16 newest, a build takes (deletes) the one it builds",
    ),
];

pub fn document() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for (method, path, summary) in OPERATIONS {
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| {
                let start = seg.find('{')?;
                let end = seg.find('}')?;
                Some(json!({
                    "name": &seg[start + 1..end], "in": "path", "required": true,
                    "schema": {"type": "string"}
                }))
            })
            .collect();
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[*method] = json!({
            "summary": summary,
            "parameters": params,
            "security": [{"bearer": []}],
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {}}},
                "default": {"description": "Error", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Error"}}}}
            }
        });
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Skiff API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Cloud Run Admin API v1 plus Skiff's own resources"},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                "code": {"type": "integer"}, "message": {"type": "string"}, "status": {"type": "string"}}}}}}
        }
    })
}
