// placeholder
namespace qat::text {}
