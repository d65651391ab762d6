"""The workflow definitions' API routes (mounted under /v1/opscore/ by opscore_site/api_urls.py)."""

from rest_framework.routers import SimpleRouter

from workflows.api.views import WorkflowDefinitionViewSet

router = SimpleRouter(trailing_slash="")
router.register("workflows", WorkflowDefinitionViewSet, basename="workflow")

urlpatterns = router.urls
